package rewrite

import (
	"encoding/binary"
	"strconv"
)

// FUNCTION DUMP and RESTORE payloads, in Redis 7.0's own format, so that a
// tenant can move its libraries between keyfence and a Redis of its own in
// either direction: one RDB_OPCODE_FUNCTION2 record (0xf5, then the
// library's code as an RDB string) per library, then the RDB version (two
// bytes, little-endian) and the CRC-64 (Jones) of all that (eight bytes,
// little-endian).
//
// keyfence never hands a payload to upstream's FUNCTION RESTORE: it reads
// the libraries' code out of it here and loads each one into the sandbox as
// FUNCTION LOAD does. So a crafted payload can carry nothing but library
// code, which runs in the sandbox like any other; no checksum or signature
// of keyfence's is needed to keep code out of upstream's reach. (Redis 7.0
// itself exits on some corrupt payloads, such as an unknown string
// encoding; this reader refuses them.)

const (
	rdbOpcodeFunction  = 0xf6 // Redis 7.0-rc1/rc2: name, engine, description, code
	rdbOpcodeFunction2 = 0xf5 // Redis 7.0: the code, #!lua line included
	rdbVersion         = 10   // Redis 7.0's RDB_VERSION
)

// AppendFunctionDump appends the payload of FUNCTION DUMP for libraries of
// the given codes. Codes are stored uncompressed (Redis compresses those
// longer than 20 bytes that LZF shrinks; its RESTORE reads either).
func AppendFunctionDump(dst []byte, codes [][]byte) []byte {
	var body []byte
	for _, c := range codes {
		body = append(body, rdbOpcodeFunction2)
		body = appendRDBLen(body, uint64(len(c)))
		body = append(body, c...)
	}
	return append(dst, SealFunctionDump(body)...)
}

// SealFunctionDump appends the footer to a payload's records: the RDB
// version and the CRC-64 of the records and the version.
func SealFunctionDump(body []byte) []byte {
	body = binary.LittleEndian.AppendUint16(body, rdbVersion)
	return binary.LittleEndian.AppendUint64(body, crc64Jones(0, body))
}

// appendRDBLen is Redis's rdbSaveLen.
func appendRDBLen(dst []byte, n uint64) []byte {
	switch {
	case n < 1<<6:
		return append(dst, byte(n))
	case n < 1<<14:
		return append(dst, 0x40|byte(n>>8), byte(n))
	case n <= 1<<32-1:
		return binary.BigEndian.AppendUint32(append(dst, 0x80), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(dst, 0x81), n)
}

// ParseFunctionDump reads the library codes out of a FUNCTION RESTORE
// payload as Redis 7.0's functionRestoreCommand does. A payload whose
// footer is wrong gets ErrFunctionDump. A record Redis could not load ends
// the list with a FunctionDumpError, which the caller reports only after
// the libraries before it loaded: Redis reports a library's own error
// first, in payload order.
func ParseFunctionDump(p []byte) ([][]byte, error) {
	if len(p) < 10 {
		return nil, ErrFunctionDump
	}
	footer := p[len(p)-10:]
	if binary.LittleEndian.Uint16(footer) > rdbVersion {
		return nil, ErrFunctionDump
	}
	if crc64Jones(0, p[:len(p)-8]) != binary.LittleEndian.Uint64(footer[2:]) {
		return nil, ErrFunctionDump
	}
	// Redis reads records while more than the footer's ten bytes remain;
	// a record may run into the footer, never past the payload.
	r := rdbReader{b: p}
	var codes [][]byte
	for len(p)-r.pos > 10 {
		op := r.b[r.pos]
		r.pos++
		switch op {
		case rdbOpcodeFunction2:
			code, ok := r.str()
			if !ok {
				return codes, FunctionDumpError("ERR Failed loading library payload")
			}
			codes = append(codes, code)
		case rdbOpcodeFunction:
			code, err := r.oldFunction()
			if err != nil {
				return codes, err
			}
			codes = append(codes, code)
		default:
			return codes, FunctionDumpError("ERR given type is not a function")
		}
	}
	return codes, nil
}

// oldFunction reads a record of Redis 7.0-rc1/rc2 and turns it into the
// code Redis 7.0 makes of it: "#!<engine> name=<name>\n<code>".
func (r *rdbReader) oldFunction() ([]byte, error) {
	name, ok := r.str()
	if !ok {
		return nil, FunctionDumpError("ERR Failed loading library name")
	}
	engine, ok := r.str()
	if !ok {
		return nil, FunctionDumpError("ERR Failed loading engine name")
	}
	hasDesc, ok := r.length()
	if !ok {
		return nil, FunctionDumpError("ERR Failed loading library description indicator")
	}
	if hasDesc != 0 {
		if _, ok := r.str(); !ok {
			return nil, FunctionDumpError("ERR Failed loading library description")
		}
	}
	blob, ok := r.str()
	if !ok {
		return nil, FunctionDumpError("ERR Failed loading library blob")
	}
	// Redis formats it with sdscatfmt's %s: each part up to its first NUL.
	code := "#!" + cString(engine) + " name=" + cString(name) + "\n" + cString(blob)
	return []byte(code), nil
}

// rdbReader reads RDB lengths and strings from a payload.
type rdbReader struct {
	b   []byte
	pos int
}

func (r *rdbReader) byte() (byte, bool) {
	if r.pos >= len(r.b) {
		return 0, false
	}
	c := r.b[r.pos]
	r.pos++
	return c, true
}

func (r *rdbReader) take(n uint64) ([]byte, bool) {
	if n > uint64(len(r.b)-r.pos) {
		return nil, false
	}
	s := r.b[r.pos : r.pos+int(n)]
	r.pos += int(n)
	return s, true
}

// length is rdbLoadLen of a plain length.
func (r *rdbReader) length() (uint64, bool) {
	n, enc, ok := r.lenOrEncoding()
	return n, ok && !enc
}

// lenOrEncoding is rdbLoadLenByRef: a length, or a string encoding when
// enc is set.
func (r *rdbReader) lenOrEncoding() (n uint64, enc, ok bool) {
	c, ok := r.byte()
	if !ok {
		return 0, false, false
	}
	switch c >> 6 {
	case 0:
		return uint64(c & 0x3f), false, true
	case 1:
		lo, ok := r.byte()
		return uint64(c&0x3f)<<8 | uint64(lo), false, ok
	case 3:
		return uint64(c & 0x3f), true, true
	}
	switch c {
	case 0x80:
		b, ok := r.take(4)
		if !ok {
			return 0, false, false
		}
		return uint64(binary.BigEndian.Uint32(b)), false, true
	case 0x81:
		b, ok := r.take(8)
		if !ok {
			return 0, false, false
		}
		return binary.BigEndian.Uint64(b), false, true
	}
	return 0, false, false
}

// str is rdbGenericLoadStringObject: raw, integer-encoded or LZF.
func (r *rdbReader) str() ([]byte, bool) {
	n, enc, ok := r.lenOrEncoding()
	if !ok {
		return nil, false
	}
	if !enc {
		s, ok := r.take(n)
		return append([]byte(nil), s...), ok
	}
	switch n {
	case 0, 1, 2: // RDB_ENC_INT8, INT16, INT32
		b, ok := r.take(1 << n)
		if !ok {
			return nil, false
		}
		var v int64
		switch n {
		case 0:
			v = int64(int8(b[0]))
		case 1:
			v = int64(int16(binary.LittleEndian.Uint16(b)))
		default:
			v = int64(int32(binary.LittleEndian.Uint32(b)))
		}
		return strconv.AppendInt(nil, v, 10), true
	case 3: // RDB_ENC_LZF
		clen, ok := r.length()
		if !ok {
			return nil, false
		}
		ulen, ok := r.length()
		if !ok || ulen > MaxScriptBytes {
			// Larger than any library keyfence runs: never allocated.
			return nil, false
		}
		c, ok := r.take(clen)
		if !ok {
			return nil, false
		}
		out := make([]byte, ulen)
		if lzfDecompress(c, out) != len(out) {
			return nil, false
		}
		return out, true
	}
	return nil, false
}

// lzfDecompress is liblzf's lzf_decompress (which Redis uses): it returns
// the bytes written to out, 0 when in is not valid LZF that fits out.
func lzfDecompress(in, out []byte) int {
	ip, op := 0, 0
	for ip < len(in) {
		ctrl := int(in[ip])
		ip++
		if ctrl < 1<<5 { // a run of ctrl+1 literal bytes
			ctrl++
			if op+ctrl > len(out) || ip+ctrl > len(in) {
				return 0
			}
			copy(out[op:], in[ip:ip+ctrl])
			op += ctrl
			ip += ctrl
			continue
		}
		// A back reference: length and offset into what was written.
		n := ctrl >> 5
		ref := op - (ctrl&0x1f)<<8 - 1
		if ip >= len(in) {
			return 0
		}
		if n == 7 {
			n += int(in[ip])
			ip++
			if ip >= len(in) {
				return 0
			}
		}
		ref -= int(in[ip])
		ip++
		if op+n+2 > len(out) || ref < 0 {
			return 0
		}
		for i := 0; i < n+2; i++ { // may overlap what it writes
			out[op] = out[ref]
			op++
			ref++
		}
	}
	return op
}

// crc64Jones is Redis's crc64: the Jones polynomial, reflected, with no
// initial or final inversion (Go's hash/crc64 inverts both).
func crc64Jones(crc uint64, b []byte) uint64 {
	for _, c := range b {
		crc = crc64Table[byte(crc)^c] ^ crc>>8
	}
	return crc
}

var crc64Table = func() (t [256]uint64) {
	const poly = 0x95ac9329ac4bc9b5 // 0xad93d23594c935a9, reflected
	for i := range t {
		c := uint64(i)
		for range 8 {
			if c&1 != 0 {
				c = c>>1 ^ poly
			} else {
				c >>= 1
			}
		}
		t[i] = c
	}
	return t
}()
