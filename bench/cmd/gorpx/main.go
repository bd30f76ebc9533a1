package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
	"github.com/tidwall/redcon"
)

// prefix is what keyfence --tenant bench puts before every key.
const prefix = "tenant:bench:"

func main() {
	listen := flag.String("listen", "127.0.0.1:6390", "address to serve RESP on")
	upstream := flag.String("redis", "127.0.0.1:6379", "upstream Redis address")
	fullDuplex := flag.Bool("full-duplex", false, "AutoPipelineOptions.FullDuplex: one held upstream connection with a writer and a reader goroutine instead of one batch per round trip")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "gorpx: unexpected arguments:", flag.Args())
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("gorpx: %v", err)
	}
	log.Printf("gorpx: serving %s, upstream %s", ln.Addr(), *upstream)
	var opt *redis.AutoPipelineOptions
	if *fullDuplex {
		opt = redis.DefaultAutoPipelineOptions()
		opt.FullDuplex = true
	}
	if err := serve(ctx, ln, *upstream, opt); err != nil {
		log.Fatalf("gorpx: %v", err)
	}
}

// serve answers clients on ln until ctx is done, then closes ln, every
// client connection and the upstream client. A nil opt means the library's
// AsyncAutoPipeline defaults.
func serve(ctx context.Context, ln net.Listener, upstream string, opt *redis.AutoPipelineOptions) error {
	rdb := redis.NewClient(&redis.Options{
		Addr: upstream,
		// redis-benchmark speaks RESP2, and raw replies are passed on as
		// they come: the upstream connection must speak RESP2 as well.
		Protocol:        2,
		DisableIdentity: true,
	})
	defer rdb.Close()
	// The library's defaults (ordered, one batch in flight, up to 200
	// commands per batch) unless opt says otherwise.
	ap, err := rdb.AsyncAutoPipelineWithOptions(opt)
	if err != nil {
		ln.Close()
		return err
	}
	defer ap.Close()

	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			// Serve returns once its listener is closed, and then closes
			// every client connection.
			ln.Close()
		case <-stopped:
		}
	}()
	return redcon.Serve(ln, (&proxy{ap: ap}).serveRESP, nil, nil)
}

type proxy struct {
	ap *redis.AutoPipeliner
}

// reply is one command's answer, in client order: a local reply or a
// submitted upstream command.
type reply struct {
	local []byte
	fut   redis.AutoFuture
	cmd   *redis.RawCmd
}

// connState is reused across a connection's pipelines.
type connState struct{ replies []reply }

var (
	replyPong       = []byte("+PONG\r\n")
	replyOK         = []byte("+OK\r\n")
	replyEmptyArray = []byte("*0\r\n")
)

// serveRESP is called by redcon for the first command of what it parsed from
// one read; the rest of that pipeline is taken with ReadPipeline, so that
// every command of it is submitted before the first reply is awaited.
func (p *proxy) serveRESP(conn redcon.Conn, first redcon.Command) {
	st, _ := conn.Context().(*connState)
	if st == nil {
		st = &connState{}
		conn.SetContext(st)
	}
	rest := conn.ReadPipeline()
	replies := st.replies[:0]
	quit := false
	for i := -1; i < len(rest) && !quit; i++ {
		cmd := first
		if i >= 0 {
			cmd = rest[i]
		}
		var r reply
		r, quit = p.submit(cmd.Args)
		replies = append(replies, r)
	}
	// The args submitted point into redcon's read buffer, which is reused
	// once this function returns: every command must have executed first.
	for i := range replies {
		r := &replies[i]
		if r.cmd == nil {
			conn.WriteRaw(r.local)
		} else if err := r.fut.Wait(); err != nil {
			conn.WriteError("ERR gorpx: " + strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			conn.WriteRaw(r.cmd.Val())
		}
		*r = reply{}
	}
	st.replies = replies[:0]
	if quit {
		conn.Close()
	}
}

// submit answers one command locally or queues it upstream with its keys
// prefixed; quit is true for QUIT.
func (p *proxy) submit(args [][]byte) (r reply, quit bool) {
	if len(args) == 0 {
		return reply{local: []byte("-ERR empty command\r\n")}, false
	}
	name := commandName(args[0])
	switch name {
	case "ping":
		if len(args) == 2 {
			return reply{local: redcon.AppendBulk(nil, args[1])}, false
		}
		return reply{local: replyPong}, false
	case "config":
		// redis-benchmark asks for "save" and "appendonly" at start.
		if len(args) > 1 && strings.EqualFold(string(args[1]), "get") {
			return reply{local: replyEmptyArray}, false
		}
		return reply{local: replyOK}, false
	case "quit":
		return reply{local: replyOK}, true
	}
	a := make([]any, len(args))
	a[0] = name
	for i := 1; i < len(args); i++ {
		a[i] = args[i]
	}
	switch name {
	case "get", "set", "incr", "lpush", "hset":
		if len(args) > 1 {
			a[1] = prefixed(args[1])
		}
	case "mset":
		for i := 1; i < len(args); i += 2 {
			a[i] = prefixed(args[i])
		}
	}
	cmd := redis.NewRawCmd(context.Background(), a...)
	return reply{fut: p.ap.Submit(context.Background(), cmd), cmd: cmd}, false
}

func prefixed(key []byte) []byte {
	b := make([]byte, 0, len(prefix)+len(key))
	return append(append(b, prefix...), key...)
}

// known are the names redis-benchmark sends, returned without allocating.
var known = []string{"get", "set", "incr", "lpush", "hset", "mset", "ping", "config", "quit"}

// commandName returns the lower-cased command name.
func commandName(b []byte) string {
	for _, k := range known {
		if len(b) == len(k) && bytes.EqualFold(b, []byte(k)) {
			return k
		}
	}
	return strings.ToLower(string(b))
}
