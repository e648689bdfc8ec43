package templates

import (
	"bytes"
	"regexp"
	"strings"
)

// secretKeyRe matches key names whose values are secrets.
var secretKeyRe = regexp.MustCompile(`(?i)(password|passwd|secret|token|credential|private_?key|api_?key|access_?key|(^|[_.-])key$)`)

// IsSecretKey reports whether a deployment.toml key name (its last part)
// holds a secret: password, secret, token, credential, private_key,
// api_key, access_key, or a name ending in "key" as a word (key,
// consumer_key...). Names such as key_manager or keystore are not secrets.
func IsSecretKey(name string) bool { return secretKeyRe.MatchString(name) }

// Redact returns a copy of a deployment.toml (as gwnomad renders it: one
// key = value per line) with every secret value replaced by "<redacted>":
// values of keys IsSecretKey names, and any value holding $secret{...}.
// Inline tables are redacted key by key.
func Redact(doc []byte) []byte {
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(doc), "\n") {
		out.WriteString(redactLine(line))
	}
	return out.Bytes()
}

const redacted = `"<redacted>"`

func redactLine(line string) string {
	trimmed := strings.TrimSpace(line)
	if trimmed == "" || trimmed[0] == '#' || trimmed[0] == '[' {
		return line
	}
	eq := keyEnd(line)
	if eq < 0 {
		return line
	}
	key, value := line[:eq], line[eq+1:]
	nl := ""
	if strings.HasSuffix(value, "\n") {
		nl, value = "\n", strings.TrimSuffix(value, "\n")
	}
	parts := splitKey(strings.TrimSpace(key))
	if len(parts) > 0 && IsSecretKey(parts[len(parts)-1]) || strings.Contains(value, "$secret{") && !strings.HasPrefix(strings.TrimSpace(value), "{") && !strings.HasPrefix(strings.TrimSpace(value), "[") {
		return key + "= " + redacted + nl
	}
	if v := strings.TrimSpace(value); strings.HasPrefix(v, "{") || strings.HasPrefix(v, "[") {
		return key + "= " + redactInline(v) + nl
	}
	return line
}

// keyEnd finds the '=' that ends the key of a key = value line (outside
// quotes), or -1.
func keyEnd(s string) int {
	var q byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case q != 0:
			if c == '\\' && q == '"' {
				i++
			} else if c == q {
				q = 0
			}
		case c == '"' || c == '\'':
			q = c
		case c == '=':
			return i
		}
	}
	return -1
}

// splitKey splits a dotted TOML key into parts (quotes removed).
func splitKey(k string) []string {
	var parts []string
	var cur strings.Builder
	var q byte
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case q != 0:
			if c == '\\' && q == '"' && i+1 < len(k) {
				i++
				cur.WriteByte(k[i])
			} else if c == q {
				q = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '"' || c == '\'':
			q = c
		case c == '.':
			parts = append(parts, strings.TrimSpace(cur.String()))
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, strings.TrimSpace(cur.String()))
}

// inlinePairRe matches `secretkey = "value"` pairs inside inline tables
// and string values holding $secret{...}.
var (
	inlinePairRe   = regexp.MustCompile(`([A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")\s*=\s*("(?:[^"\\]|\\.)*"|'[^']*'|[^,}\]]+)`)
	secretStringRe = regexp.MustCompile(`"(?:[^"\\]|\\.)*\$secret\{(?:[^"\\]|\\.)*"`)
)

func redactInline(v string) string {
	v = inlinePairRe.ReplaceAllStringFunc(v, func(pair string) string {
		m := inlinePairRe.FindStringSubmatch(pair)
		name := strings.Trim(m[1], `"`)
		if IsSecretKey(name) {
			return m[1] + " = " + redacted
		}
		return pair
	})
	return secretStringRe.ReplaceAllString(v, redacted)
}
