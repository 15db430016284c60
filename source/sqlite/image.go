package sqlite

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// value is one column value of a row image, by SQLite storage class.
type value struct {
	class byte // 'n' null, 'i' integer, 'r' real, 't' text, 'b' blob
	i     int64
	f     float64
	b     []byte // text or blob; aliases the decoder's buffer
}

func (v value) className() string {
	switch v.class {
	case 'i':
		return "integer"
	case 'r':
		return "real"
	case 't':
		return "text"
	case 'b':
		return "blob"
	}
	return "null"
}

// imageDecoder parses the JSON row images imageExpr produces. It is not a
// general JSON parser: it accepts exactly what SQLite's json_array writes
// for those expressions, and keeps text bytes as they are (invalid UTF-8
// included), which encoding/json would not.
type imageDecoder struct {
	buf  []byte
	vals []value
}

var errImage = errors.New("malformed row image")

// parse decodes s. The returned values alias d's buffer until the next call.
func (d *imageDecoder) parse(s string) ([]value, error) {
	// Decoded text and blob bytes never exceed the image's length, so buf
	// never moves while values point into it.
	if cap(d.buf) < len(s) {
		d.buf = make([]byte, 0, len(s)+len(s)/4)
	}
	d.buf = d.buf[:0]
	d.vals = d.vals[:0]
	if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return nil, errImage
	}
	i := 1
	if s[i] == ']' {
		return d.vals, nil
	}
	for {
		var v value
		switch c := s[i]; {
		case c == 'n':
			if len(s)-i < 4 || s[i:i+4] != "null" {
				return nil, errImage
			}
			v.class = 'n'
			i += 4
		case c == '-' || ('0' <= c && c <= '9'):
			j := i + 1
			for j < len(s) && '0' <= s[j] && s[j] <= '9' {
				j++
			}
			n, err := strconv.ParseInt(s[i:j], 10, 64)
			if err != nil {
				return nil, errImage
			}
			v.class, v.i = 'i', n
			i = j
		case c == '"':
			start := len(d.buf)
			j, err := d.unquote(s, i+1)
			if err != nil {
				return nil, err
			}
			i = j
			body := d.buf[start:]
			if len(body) == 0 {
				return nil, errImage
			}
			v.class = body[0]
			switch v.class {
			case 't':
				v.b = body[1:len(body):len(body)]
			case 'b':
				n, err := hex.Decode(body[:len(body)-1], body[1:]) // in place: decoding shrinks
				if err != nil {
					return nil, errImage
				}
				v.b = body[:n:n]
				d.buf = d.buf[:start+n]
			case 'r':
				f, err := strconv.ParseFloat(string(body[1:]), 64)
				if err != nil {
					return nil, errImage
				}
				v.f = f
				d.buf = d.buf[:start]
			default:
				return nil, errImage
			}
		default:
			return nil, errImage
		}
		d.vals = append(d.vals, v)
		if i >= len(s) {
			return nil, errImage
		}
		switch s[i] {
		case ',':
			i++
		case ']':
			if i != len(s)-1 {
				return nil, errImage
			}
			return d.vals, nil
		default:
			return nil, errImage
		}
	}
}

// unquote appends the JSON string starting after the quote at s[i-1] to
// d.buf and returns the index after its closing quote.
func (d *imageDecoder) unquote(s string, i int) (int, error) {
	for i < len(s) {
		j := i
		for j < len(s) && s[j] != '"' && s[j] != '\\' {
			j++
		}
		d.buf = append(d.buf, s[i:j]...)
		if j >= len(s) {
			return 0, errImage
		}
		if s[j] == '"' {
			return j + 1, nil
		}
		// Escape sequence.
		if j+1 >= len(s) {
			return 0, errImage
		}
		switch e := s[j+1]; e {
		case '"', '\\', '/':
			d.buf = append(d.buf, e)
			i = j + 2
		case 'b':
			d.buf, i = append(d.buf, '\b'), j+2
		case 'f':
			d.buf, i = append(d.buf, '\f'), j+2
		case 'n':
			d.buf, i = append(d.buf, '\n'), j+2
		case 'r':
			d.buf, i = append(d.buf, '\r'), j+2
		case 't':
			d.buf, i = append(d.buf, '\t'), j+2
		case 'u':
			r, ok := hex4(s, j+2)
			if !ok {
				return 0, errImage
			}
			i = j + 6
			if utf16.IsSurrogate(r) {
				r2, ok := rune(0), false
				if i+1 < len(s) && s[i] == '\\' && s[i+1] == 'u' {
					r2, ok = hex4(s, i+2)
				}
				dec := utf16.DecodeRune(r, r2)
				if !ok || dec == utf8.RuneError {
					return 0, errImage // SQLite never writes a lone surrogate
				}
				r, i = dec, i+6
			}
			d.buf = utf8.AppendRune(d.buf, r)
		default:
			return 0, errImage
		}
	}
	return 0, errImage
}

func hex4(s string, i int) (rune, bool) {
	if i+4 > len(s) {
		return 0, false
	}
	n, err := strconv.ParseUint(s[i:i+4], 16, 16)
	return rune(n), err == nil
}

// ValueError reports a value that its column's Avro type cannot represent
// without loss, such as 'abc' stored in an INTEGER column of a table that
// is not STRICT. Capture stops at it: the source never drops or coerces a
// value. The cure is to fix the row (or declare the column's type so that
// it maps to a type that holds the value) and to prefer STRICT tables.
type ValueError struct {
	Table  string // logical source name, main.<table>
	Column string
	Seq    uint64 // change-log sequence of the row entry
	Class  string // SQLite storage class of the value
	Avro   string // Avro type of the column
	Detail string // the value, abbreviated
}

// Error names the table, column and change-log seq, and the cure.
func (e *ValueError) Error() string {
	return fmt.Sprintf("databus: sqlite: %s column %q at change-log seq %d: %s value %s cannot be captured as Avro %s without loss; correct the row or the column's declared type (STRICT tables prevent this)",
		e.Table, e.Column, e.Seq, e.Class, e.Detail, e.Avro)
}

func describe(v value) string {
	var s string
	switch v.class {
	case 'i':
		s = strconv.FormatInt(v.i, 10)
	case 'r':
		s = strconv.FormatFloat(v.f, 'g', -1, 64)
	case 't':
		s = strconv.Quote(string(v.b))
	case 'b':
		s = "x'" + hex.EncodeToString(v.b) + "'"
	default:
		s = "NULL"
	}
	if len(s) > 40 {
		s = s[:37] + "..."
	}
	return s
}

// canonicalReal is the text form of a real where the target is a string:
// the shortest decimal that parses back to the same double.
func canonicalReal(dst []byte, f float64) []byte { return strconv.AppendFloat(dst, f, 'g', -1, 64) }

// convert returns v as the storage class k is encoded from: 'n', 'i' (long
// and boolean), 'r' (double), 't' (string), 'b' (bytes). ok is false when
// the conversion would lose information.
func convert(v value, k kind) (value, bool) {
	if v.class == 'n' {
		return v, true
	}
	switch k {
	case kLong:
		return v, v.class == 'i'
	case kBool:
		return v, v.class == 'i' && (v.i == 0 || v.i == 1)
	case kDouble:
		switch v.class {
		case 'r':
			return v, true
		case 'i':
			f := float64(v.i)
			if f >= -(1<<63) && f < 1<<63 && int64(f) == v.i {
				return value{class: 'r', f: f}, true
			}
		}
		return v, false
	case kString:
		switch v.class {
		case 't':
			return v, true
		case 'i':
			return value{class: 't', b: strconv.AppendInt(nil, v.i, 10)}, true
		case 'r':
			return value{class: 't', b: canonicalReal(nil, v.f)}, true
		}
		return v, false
	case kBytes:
		return v, v.class == 'b'
	}
	return v, false
}

// appendAvro appends a converted value in the Avro binary encoding of its
// column: for a nullable column the union ["null", T] (branch 0 or 1).
func appendAvro(dst []byte, v value, k kind, nullable bool) []byte {
	if nullable {
		if v.class == 'n' {
			return append(dst, 0)
		}
		dst = append(dst, 2) // branch 1, zig-zag encoded
	}
	switch k {
	case kLong:
		return schema.AppendLong(dst, v.i)
	case kBool:
		return append(dst, byte(v.i))
	case kDouble:
		return binary.LittleEndian.AppendUint64(dst, math.Float64bits(v.f))
	default: // kString, kBytes
		return append(schema.AppendLong(dst, int64(len(v.b))), v.b...)
	}
}

// appendKey appends a converted value as an event key component.
func appendKey(dst []byte, v value, k kind) []byte {
	if v.class == 'n' {
		return event.AppendKeyNull(dst)
	}
	switch k {
	case kLong, kBool:
		return event.AppendKeyInt(dst, v.i)
	case kDouble:
		var b [32]byte
		return event.AppendKeyString(dst, string(canonicalReal(b[:0], v.f)))
	case kBytes:
		return event.AppendKeyBytes(dst, v.b)
	default:
		return event.AppendKeyString(dst, string(v.b))
	}
}

// encodeRow converts the values of one row image and appends its Avro
// record to avro and its key to key. On a value the version cannot
// represent it returns the index of the offending column and the value.
func (ver *version) encodeRow(vals []value, avro, key []byte, conv *[]value) (avroOut, keyOut []byte, bad int, badVal value, err error) {
	if len(vals) != len(ver.kinds) {
		return avro, key, -1, value{}, fmt.Errorf("%w: %d values for %d columns", errImage, len(vals), len(ver.kinds))
	}
	cs := (*conv)[:0]
	defer func() { *conv = cs }()
	for i, v := range vals {
		c, ok := convert(v, ver.kinds[i])
		if !ok || (c.class == 'n' && !ver.nullable[i]) {
			return avro, key, i, v, nil
		}
		cs = append(cs, c)
		avro = appendAvro(avro, c, ver.kinds[i], ver.nullable[i])
	}
	for _, i := range ver.key {
		key = appendKey(key, cs[i], ver.kinds[i])
	}
	return avro, key, -1, value{}, nil
}
