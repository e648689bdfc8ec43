// Command minproxy is the benchmark's floor reference: the minimal
// round-robin reverse proxy on github.com/valyala/fasthttp that issue 8
// quotes for scale ("no health, retries, headers, logs or metrics"). It is
// not gwnomad: make bench runs it beside gwnomad lb, HAProxy and Caddy to
// show what the engine alone costs on this machine, so that the price of
// gwnomad's features (discovery, passive health, retries, forwarded headers,
// access log, metrics) can be read off the same table.
//
//	minproxy -plain 127.0.0.1:8080 -tls 127.0.0.1:8443 -cert c.pem -key k.pem -backends 127.0.0.1:9001,127.0.0.1:9002
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

func main() {
	plain := flag.String("plain", "", "plain HTTP listen address")
	tlsAddr := flag.String("tls", "", "HTTPS listen address (TLS 1.3)")
	cert := flag.String("cert", "", "certificate PEM")
	key := flag.String("key", "", "key PEM")
	backends := flag.String("backends", "", "comma-separated backend addresses")
	flag.Parse()
	if *backends == "" || *plain == "" {
		fmt.Fprintln(os.Stderr, "minproxy: -plain and -backends are required")
		os.Exit(2)
	}
	var clients []*fasthttp.HostClient
	for _, b := range strings.Split(*backends, ",") {
		clients = append(clients, &fasthttp.HostClient{Addr: b, MaxConns: 1024, ReadTimeout: 60 * time.Second, WriteTimeout: 60 * time.Second})
	}
	var next atomic.Uint64
	handler := func(ctx *fasthttp.RequestCtx) {
		hc := clients[next.Add(1)%uint64(len(clients))]
		ctx.Request.URI().SetScheme("http") // the backends speak plain HTTP
		if err := hc.Do(&ctx.Request, &ctx.Response); err != nil {
			ctx.Error("bad gateway", fasthttp.StatusBadGateway)
		}
	}
	srv := &fasthttp.Server{Handler: handler, NoDefaultServerHeader: true, NoDefaultDate: true}
	errc := make(chan error, 2)
	go func() { errc <- srv.ListenAndServe(*plain) }()
	if *tlsAddr != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			log.Fatal(err)
		}
		ln, err := net.Listen("tcp", *tlsAddr)
		if err != nil {
			log.Fatal(err)
		}
		tl := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13, NextProtos: []string{"http/1.1"}})
		go func() { errc <- srv.Serve(tl) }()
	}
	log.Fatal(<-errc)
}
