package resp

import (
	"errors"
	"strconv"
)

// Value is a decoded RESP reply, for the few places where keyfence must read
// what upstream said (SCAN cursors, INFO text) rather than pass it on.
type Value struct {
	Type  byte // the RESP type byte: '+', '-', ':', '$', '*', '%', …
	Str   []byte
	Num   int64
	Elems []Value
	Null  bool
}

// ErrBadValue is returned for a reply that is not one complete RESP value.
var ErrBadValue = errors.New("unexpected reply shape from upstream")

// Err returns the reply as an error when it is an error reply.
func (v Value) Err() error {
	if v.Type == '-' || v.Type == '!' {
		return errors.New(string(v.Str))
	}
	return nil
}

// Parse decodes one complete reply.
func Parse(b []byte) (Value, error) {
	v, n, err := decode(b)
	if err == nil && n != len(b) {
		err = ErrBadValue
	}
	return v, err
}

func decode(b []byte) (Value, int, error) {
	n, err := ReplyLen(b)
	if err != nil || n == 0 {
		return Value{}, 0, ErrBadValue
	}
	end := 1
	for end < len(b) && b[end] != '\r' {
		end++
	}
	line := b[1:end]
	body := end + 2
	v := Value{Type: b[0]}
	switch b[0] {
	case '+', '-', ',', '(', '#':
		v.Str = line
	case '_':
		v.Null = true
	case ':':
		v.Num, _ = strconv.ParseInt(string(line), 10, 64)
	case '$', '=', '!':
		size, _ := strconv.Atoi(string(line))
		if size < 0 {
			v.Null = true
		} else {
			v.Str = b[body : body+size]
		}
	case '*', '~', '>', '%':
		count, _ := strconv.Atoi(string(line))
		if count < 0 {
			v.Null = true
			break
		}
		if b[0] == '%' {
			count *= 2
		}
		pos := body
		for i := 0; i < count; i++ {
			e, m, err := decode(b[pos:])
			if err != nil {
				return Value{}, 0, err
			}
			v.Elems = append(v.Elems, e)
			pos += m
		}
	}
	return v, n, nil
}
