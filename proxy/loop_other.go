//go:build !linux

package proxy

import (
	"context"
	"errors"
	"net"

	"github.com/keyfence/keyfence/rewrite"
)

// eventLoop is Linux's (loop.go): elsewhere every session has a goroutine.
type eventLoop struct{}

type loopConn struct {
	loop    *eventLoop
	release bool
}

func newEventLoop(*Server) (*eventLoop, error) { return nil, nil }

func (l *eventLoop) detach(*session, context.Context, func(), func()) bool { return false }
func (l *eventLoop) adopt(*loopConn)                                       {}
func (l *eventLoop) release(*loopConn)                                     {}
func (l *eventLoop) abort()                                                {}
func (l *eventLoop) close()                                                {}
func (s *session) loopServes(*rewrite.Command, [][]byte) bool              { return false }
func (l *eventLoop) track(context.Context, net.Conn, func([]byte) error) error {
	return errors.New("no event loop")
}
