package proxy

import (
	"bytes"
	"encoding/json"
	"strconv"
	"testing"
	"time"
)

// The cached timestamp and the integer milliseconds must print exactly what
// time.AppendFormat and strconv.AppendFloat printed before.
func TestAccessLogStampAndMillis(t *testing.T) {
	var buf bytes.Buffer
	l := NewAccessLog(&buf, nil)
	base := time.Date(2025, 1, 2, 3, 4, 5, 678_900_000, time.UTC)
	for _, st := range []time.Time{base, base.Add(7 * time.Millisecond), base.Add(time.Second), base.Add(90 * time.Minute).In(time.FixedZone("x", 3600))} {
		buf.Reset()
		l.Write(&Entry{Start: st, Duration: 1234567 * time.Nanosecond, Status: 200})
		l.Flush()
		var m map[string]any
		if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
			t.Fatalf("%q: %v", buf.String(), err)
		}
		if want := st.UTC().Format("2006-01-02T15:04:05.000Z07:00"); m["time"] != want {
			t.Errorf("time %v, want %v", m["time"], want)
		}
		if !bytes.Contains(buf.Bytes(), []byte(`"duration_ms":1.234`)) {
			t.Errorf("duration: %s", buf.String())
		}
	}
	for _, us := range []int64{0, 1, 999, 1000, 1001, 12345678} {
		want := strconv.AppendFloat(nil, float64(us)/1000, 'f', 3, 64)
		if got := appendMillis(nil, us); !bytes.Equal(got, want) {
			t.Errorf("appendMillis(%d) = %s, want %s", us, got, want)
		}
	}
}
