package resp

import (
	"bufio"
	"errors"
)

// ReadReply reads one whole reply from br. It suits connection set-up and
// tests, where speed does not matter; the data path frames replies in its
// own buffer with ReplyLen.
func ReadReply(br *bufio.Reader) ([]byte, error) {
	var buf []byte
	for {
		if n, err := ReplyLen(buf); err != nil {
			return nil, err
		} else if n > 0 {
			return buf[:n], nil
		}
		line, err := br.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return nil, err
		}
		buf = append(buf, line...)
	}
}

// ReadValue reads and decodes one whole reply from br.
func ReadValue(br *bufio.Reader) (Value, error) {
	raw, err := ReadReply(br)
	if err != nil {
		return Value{}, err
	}
	return Parse(raw)
}

// AppendCommand appends a request of args as a client sends one.
func AppendCommand(dst []byte, args ...[]byte) []byte {
	dst = AppendArrayHeader(dst, len(args))
	for _, a := range args {
		dst = AppendBulk(dst, a)
	}
	return dst
}
