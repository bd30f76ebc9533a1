package proxy

import (
	"errors"
	"strconv"

	"github.com/keyfence/keyfence/rewrite"
)

// value is a decoded RESP reply, for the few places where keyfence must read
// what upstream said (SCAN cursors, INFO text) rather than pass it on.
type value struct {
	typ   byte // the RESP type byte: '+', '-', ':', '$', '*', '%', …
	str   []byte
	num   int64
	elems []value
	null  bool
}

var errBadValue = errors.New("unexpected reply shape from upstream")

func (v value) err() error {
	if v.typ == '-' || v.typ == '!' {
		return errors.New(string(v.str))
	}
	return nil
}

// parseValue decodes one complete reply (as returned by an upConn).
func parseValue(b []byte) (value, error) {
	v, n, err := decodeValue(b)
	if err == nil && n != len(b) {
		err = errBadValue
	}
	return v, err
}

func decodeValue(b []byte) (value, int, error) {
	n, err := rewrite.ReplyLen(b)
	if err != nil || n == 0 {
		return value{}, 0, errBadValue
	}
	end := 1
	for end < len(b) && b[end] != '\r' {
		end++
	}
	line := b[1:end]
	body := end + 2
	v := value{typ: b[0]}
	switch b[0] {
	case '+', '-', ',', '(', '#':
		v.str = line
	case '_':
		v.null = true
	case ':':
		v.num, _ = strconv.ParseInt(string(line), 10, 64)
	case '$', '=', '!':
		size, _ := strconv.Atoi(string(line))
		if size < 0 {
			v.null = true
		} else {
			v.str = b[body : body+size]
		}
	case '*', '~', '>', '%':
		count, _ := strconv.Atoi(string(line))
		if count < 0 {
			v.null = true
			break
		}
		if b[0] == '%' {
			count *= 2
		}
		pos := body
		for i := 0; i < count; i++ {
			e, m, err := decodeValue(b[pos:])
			if err != nil {
				return value{}, 0, err
			}
			v.elems = append(v.elems, e)
			pos += m
		}
	}
	return v, n, nil
}
