// Package resp reads and writes the Redis wire protocol (RESP2 and RESP3)
// for every other package of keyfence: the client side's request parser
// (ParseCommand), the framing of upstream replies (ReplyLen), the writers of
// requests and replies (Append*), and a small decoder for the few replies
// keyfence must read itself (Value).
//
// It is pure and allocation-free on the hot path: parsers return sub-slices
// of the caller's buffer and writers append to the caller's slice.
package resp
