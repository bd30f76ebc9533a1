package proxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keyfence/keyfence/internal/redistest"
)

// TestDifferentialProtocolErrors sends the same raw bytes to a direct
// redis-server and to keyfence and requires the same bytes back, up to the
// moment each closes the connection: a request header Redis refuses (a
// count or length out of range, malformed, too long, or too large before
// AUTH) gets Redis's own error and the connection ends, and what Redis
// takes as it is (odd but valid lengths) works the same. Every input ends
// in a protocol error or in QUIT, so both sides close and nothing waits on
// a timeout.
func TestDifferentialProtocolErrors(t *testing.T) {
	t.Parallel()
	const password = "protocol-secret"
	up := redistest.StartT(t, redistest.Options{Password: password})
	addr := startProxy(t, up, func(c *Config) {
		c.Upstream.Password = password
		c.ClientPassword = password
	})
	auth := string(encode(nil, "AUTH", password))
	quit := string(encode(nil, "QUIT"))
	long := strings.Repeat("1", 70<<10) // past Redis's 64 KiB for a header line
	tests := []struct {
		name string
		in   string
	}{
		{"count past INT_MAX", auth + "*2147483648\r\n"},
		{"count past int64", auth + "*99999999999999999999\r\n"},
		{"count of 21 characters", auth + "*-00000000000000000001\r\n"},
		{"count below int64", auth + "*-9223372036854775809\r\n"},
		{"count with a leading zero", auth + "*01\r\n$4\r\nPING\r\n"},
		{"count minus zero", auth + "*-0\r\n" + quit},
		{"count not a number", auth + "*abc\r\n"},
		{"count empty", auth + "*\r\n"},
		{"count with a blank", auth + "* 1\r\n"},
		{"count with a plus sign", auth + "*+1\r\n"},
		{"count line too long", auth + "*" + long},
		{"bulk length negative", auth + "*1\r\n$-1\r\n"},
		{"bulk length minus zero", auth + "*1\r\n$-0\r\n"},
		{"bulk length past proto-max-bulk-len", auth + "*1\r\n$536870913\r\n"},
		{"bulk length past int64", auth + "*1\r\n$99999999999999999999\r\n"},
		{"bulk length the largest int64", auth + "*1\r\n$9223372036854775807\r\n"},
		{"bulk length with a leading zero", auth + "*1\r\n$04\r\nPING\r\n"},
		{"bulk length with a plus sign", auth + "*1\r\n$+4\r\nPING\r\n"},
		{"bulk length not a number", auth + "*1\r\n$abc\r\n"},
		{"bulk length with a blank", auth + "*1\r\n$4 \r\nPING\r\n"},
		{"bulk length line too long", auth + "*1\r\n$" + long},
		{"no dollar", auth + "*1\r\nx\r\n"},
		{"array inside a request", auth + "*2\r\n$4\r\nPING\r\n*1\r\n"},
		{"after a good request", auth + "*1\r\n$4\r\nPING\r\n*1\r\n$-5\r\n"},
		{"the smallest int64 count is empty", auth + "*-9223372036854775808\r\n" + quit},
		{"negative counts are empty", auth + "*-5\r\n*0\r\n*1\r\n$4\r\nPING\r\n" + quit},
		{"an empty name", auth + "*1\r\n$0\r\n\r\n" + quit},
		{"before AUTH: 11 arguments", "*11\r\n"},
		{"before AUTH: a bulk of 16 KiB and one byte", "*1\r\n$16385\r\n"},
		{"before AUTH: out of range first", "*1\r\n$536870913\r\n"},
		{"before AUTH: 10 arguments", string(encode(nil, "PING", "1", "2", "3", "4", "5", "6", "7", "8", "9")) + quit},
		{"before AUTH: a bulk of 16 KiB", string(encode(nil, "ECHO", strings.Repeat("x", 16384))) + quit},
		{"after AUTH: 11 arguments", auth + string(encode(nil, "DEL", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10")) + quit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			direct, err := exchangeUntilClose(up.Addr(), []byte(tt.in))
			if err != nil {
				t.Fatalf("direct: %v", err)
			}
			proxied, err := exchangeUntilClose(addr, []byte(tt.in))
			if err != nil {
				t.Fatalf("proxy: %v", err)
			}
			if !bytes.Equal(direct, proxied) {
				t.Errorf("%.60q\n  direct: %s\n  proxy:  %s", tt.in, quoteReply(direct), quoteReply(proxied))
			}
			if len(direct) == 0 {
				t.Errorf("%.60q: no reply at all", tt.in)
			}
		})
	}
}

// exchangeUntilClose writes in and returns everything read until the
// server closes the connection.
func exchangeUntilClose(addr string, in []byte) ([]byte, error) {
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(rawTimeout))
	if _, err := nc.Write(in); err != nil {
		return nil, err
	}
	var out bytes.Buffer
	_, err = io.Copy(&out, nc)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return out.Bytes(), errors.New("the server did not close the connection")
	}
	// A reset after the server's last reply (it closed with our bytes
	// unread) is a close too.
	return out.Bytes(), nil
}
