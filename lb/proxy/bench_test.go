package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"

	"github.com/gwnomad/gwnomad/lb/balancer"
	"github.com/gwnomad/gwnomad/lb/config"
)

// fastBackend is a loopback fasthttp server answering 1 KiB.
func fastBackend(b testing.TB) string {
	body := make([]byte, 1024)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	s := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		ctx.SetContentType("application/octet-stream")
		ctx.SetBody(body)
	}}
	go func() { _ = s.Serve(ln) }()
	b.Cleanup(func() { _ = s.Shutdown() })
	return ln.Addr().String()
}

func benchProxy(b *testing.B, opt Options) {
	h := &balancer.Holder{}
	p := New(h, opt)
	bl := balancer.NewBuilder([]config.Route{{Hosts: []string{"gw.example.com"}, Policy: "p2c"}}, testHealth)
	bl.OnRoute, bl.OnNew, bl.OnGone = p.OnRoute, p.OnNew, p.OnGone
	h.Store(bl.Build(staticSnap(fastBackend(b), fastBackend(b), fastBackend(b))))
	// Parsed from the wire as the server does: the head check reads the
	// raw header block.
	var req fasthttp.Request
	if err := req.Read(bufio.NewReader(strings.NewReader("GET /pizzashack/1.0.0/menu?x=1 HTTP/1.1\r\nHost: gw.example.com\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"))); err != nil {
		b.Fatal(err)
	}
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 40000}, nil)
	// Warm the pools.
	for range 100 {
		ctx.Response.Reset()
		p.ServeFast(&ctx)
	}
	if ctx.Response.StatusCode() != 200 || len(ctx.Response.Body()) != 1024 {
		b.Fatalf("warm-up answer: %d, %d bytes", ctx.Response.StatusCode(), len(ctx.Response.Body()))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ctx.Response.Reset()
		p.ServeFast(&ctx)
	}
	b.StopTimer()
	if ctx.Response.StatusCode() != 200 {
		b.Fatalf("answer: %d", ctx.Response.StatusCode())
	}
}

// BenchmarkProxyHotPath is one request through ServeFast (route match,
// pick, forwarded headers, retry bookkeeping, metrics) to a loopback
// gateway over a keep-alive connection. allocs/op is the figure to watch.
func BenchmarkProxyHotPath(b *testing.B) { benchProxy(b, Options{}) }

// BenchmarkProxyHotPathAccessLog is the same with the access log on.
func BenchmarkProxyHotPathAccessLog(b *testing.B) {
	benchProxy(b, Options{AccessLog: runningAccessLog(b)})
}

// runningAccessLog is an access log to io.Discard with the default
// redact_query and its Run going, as in the balancer, until the end of tb.
func runningAccessLog(tb testing.TB) *AccessLog {
	l := NewAccessLog(io.Discard, nil, config.Default().Log.RedactQuery...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
	return l
}

func TestHotPathAllocations(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("loopback traffic; allocation counts differ under -race")
	}
	res := testing.Benchmark(func(b *testing.B) { benchProxy(b, Options{AccessLog: runningAccessLog(b)}) })
	// Near zero: an occasional allocation from pools warming is fine.
	if a := res.AllocsPerOp(); a > 1 {
		t.Errorf("hot path: %d allocs/op (%s)", a, res.MemString())
	}
}
