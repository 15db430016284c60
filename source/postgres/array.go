package postgres

import (
	"bytes"
	"errors"
)

var errArraySyntax = errors.New("malformed array literal")

// parseArray walks the text form of a PostgreSQL array (array_out's
// output: an optional "[1:2]=" bounds decoration, then nested braces of
// comma-separated elements, quoted with backslash escapes where needed,
// unquoted NULL for a null element) and calls fn for every element in
// row-major order. Dimensions and lower bounds are not reported: a
// multi-dimensional array comes out flat. fn's elem is only valid during
// the call.
func parseArray(s []byte, fn func(elem []byte, null bool) error) error {
	if len(s) > 0 && s[0] == '[' {
		eq := bytes.IndexByte(s, '=')
		if eq < 0 {
			return errArraySyntax
		}
		s = s[eq+1:]
	}
	p := arrayParser{s: s, fn: fn}
	if err := p.list(0); err != nil {
		return err
	}
	if p.i != len(p.s) {
		return errArraySyntax
	}
	return nil
}

type arrayParser struct {
	s   []byte
	i   int
	fn  func([]byte, bool) error
	buf []byte // unescaped quoted element
}

// list parses {elem,elem,...} or {{...},{...}} at p.i.
func (p *arrayParser) list(depth int) error {
	if depth > 6 || p.i >= len(p.s) || p.s[p.i] != '{' { // MAXDIM is 6
		return errArraySyntax
	}
	p.i++
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		return nil
	}
	for {
		if p.i >= len(p.s) {
			return errArraySyntax
		}
		var err error
		switch p.s[p.i] {
		case '{':
			err = p.list(depth + 1)
		case '"':
			err = p.quoted()
		default:
			err = p.unquoted()
		}
		if err != nil {
			return err
		}
		if p.i >= len(p.s) {
			return errArraySyntax
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return nil
		default:
			return errArraySyntax
		}
	}
}

func (p *arrayParser) quoted() error {
	p.i++ // opening quote
	p.buf = p.buf[:0]
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch c {
		case '\\':
			if p.i+1 >= len(p.s) {
				return errArraySyntax
			}
			p.buf = append(p.buf, p.s[p.i+1])
			p.i += 2
		case '"':
			p.i++
			return p.fn(p.buf, false)
		default:
			p.buf = append(p.buf, c)
			p.i++
		}
	}
	return errArraySyntax
}

func (p *arrayParser) unquoted() error {
	start := p.i
	for p.i < len(p.s) && p.s[p.i] != ',' && p.s[p.i] != '}' {
		if c := p.s[p.i]; c == '{' || c == '"' || c == '\\' {
			return errArraySyntax
		}
		p.i++
	}
	elem := p.s[start:p.i]
	if len(elem) == 0 {
		return errArraySyntax
	}
	if len(elem) == 4 && (elem[0]|0x20) == 'n' && (elem[1]|0x20) == 'u' && (elem[2]|0x20) == 'l' && (elem[3]|0x20) == 'l' {
		return p.fn(nil, true)
	}
	return p.fn(elem, false)
}
