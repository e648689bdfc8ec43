package templates

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// EncodeValue writes a [config] value as a TOML value literal, the form it
// has in Consul KV: "https://km:9443/services/" (quotes included), 42,
// true, ["a", "b"], [{type = "loadbalance"}]. Arrays of tables become
// arrays of inline tables, which TOML treats the same.
func EncodeValue(v any) ([]byte, error) {
	var b strings.Builder
	if err := encode(&b, v); err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

func encode(b *strings.Builder, v any) error {
	switch x := v.(type) {
	case string:
		b.WriteString(quote(x))
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case int64:
		b.WriteString(strconv.FormatInt(x, 10))
	case int:
		b.WriteString(strconv.Itoa(x))
	case float64:
		switch {
		case math.IsNaN(x):
			b.WriteString("nan")
		case math.IsInf(x, 1):
			b.WriteString("inf")
		case math.IsInf(x, -1):
			b.WriteString("-inf")
		default:
			s := strconv.FormatFloat(x, 'g', -1, 64)
			if !strings.ContainsAny(s, ".eEn") {
				s += ".0"
			}
			b.WriteString(s)
		}
	case time.Time:
		b.WriteString(x.Format(time.RFC3339Nano))
	case toml.LocalDate, toml.LocalTime, toml.LocalDateTime:
		fmt.Fprint(b, x)
	case []any:
		b.WriteString("[")
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			if err := encode(b, e); err != nil {
				return err
			}
		}
		b.WriteString("]")
	case []string:
		b.WriteString("[")
		for i, e := range x {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(quote(e))
		}
		b.WriteString("]")
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString("{")
		for i, k := range keys {
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString(" ")
			b.WriteString(Key(k))
			b.WriteString(" = ")
			if err := encode(b, x[k]); err != nil {
				return err
			}
		}
		if len(keys) > 0 {
			b.WriteString(" ")
		}
		b.WriteString("}")
	default:
		return fmt.Errorf("encoding TOML value: unsupported type %T", v)
	}
	return nil
}

var bareKeyRe = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Key writes a TOML key part: bare when it can be, quoted otherwise.
func Key(k string) string {
	if bareKeyRe.MatchString(k) {
		return k
	}
	return quote(k)
}

// quote writes a TOML basic string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\t':
			b.WriteString(`\t`)
		case '\n':
			b.WriteString(`\n`)
		case '\f':
			b.WriteString(`\f`)
		case '\r':
			b.WriteString(`\r`)
		default:
			if r < 0x20 || r == 0x7f {
				fmt.Fprintf(&b, `\u%04X`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
