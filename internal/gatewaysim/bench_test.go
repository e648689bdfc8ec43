package gatewaysim

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

// discardWriter is a minimal http.ResponseWriter, so that the benchmark
// measures the handler and not a recorder.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}

// BenchmarkPassthru measures the API request path (routing and a 1 KiB
// answer) without the network.
func BenchmarkPassthru(b *testing.B) {
	cfg := &Config{NodeIP: "127.0.0.1"}
	s, err := New(Options{Config: cfg, Node: "gw1", Log: io.Discard})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	s.tbl.Store(testTable(b, map[string][]byte{"p.xml": SampleAPI}))
	req := httptest.NewRequest("GET", "/pizzashack/1.0.0/order/42?size=1024", nil)
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		s.passthru(w, req)
	}
}
