package mysql

import (
	"strings"
	"unicode/utf8"
)

// charset is what the adapter knows of a character set.
type charset struct {
	name    string // "utf8mb4", "latin1", "binary", ...
	maxLen  int    // bytes per character at most
	convert textConv
}

// textConv says how a character set's bytes become an Avro string.
type textConv uint8

const (
	convNone   textConv = iota // not text: binary, or a charset the adapter does not convert (bytes)
	convUTF8                   // already UTF-8 (utf8mb3, utf8mb4, ascii)
	convLatin1                 // MySQL latin1, which is Windows-1252
)

// charsetByName returns the conversion for a character set name.
func charsetByName(name string, maxLen int) charset {
	cs := charset{name: name, maxLen: max(maxLen, 1)}
	switch strings.ToLower(name) {
	case "utf8mb4", "utf8mb3", "utf8", "ascii":
		cs.convert = convUTF8
	case "latin1":
		cs.convert = convLatin1
	}
	return cs
}

var binaryCharset = charset{name: "binary", maxLen: 1}

// collationSet maps collation ids (as table-map events carry them) to
// character sets. It is read from the server at Open and immutable after.
type collationSet map[uint64]charset

func (cs collationSet) lookup(id uint64) charset {
	if id == 63 {
		return binaryCharset
	}
	if c, ok := cs[id]; ok {
		return c
	}
	return charset{name: "collation#" + itoa(int64(id)), maxLen: 1}
}

// cp1252 maps the bytes 0x80..0x9F of MySQL's latin1 to runes; MySQL maps
// the five bytes Windows-1252 leaves undefined to the C1 controls.
var cp1252 = [32]rune{
	0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
	0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x008D, 0x017D, 0x008F,
	0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
	0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
}

// appendLatin1 appends the UTF-8 encoding of latin1 (Windows-1252) text.
func appendLatin1(dst []byte, s []byte) []byte {
	for _, b := range s {
		switch {
		case b < 0x80:
			dst = append(dst, b)
		case b < 0xA0:
			dst = utf8.AppendRune(dst, cp1252[b-0x80])
		default:
			dst = utf8.AppendRune(dst, rune(b))
		}
	}
	return dst
}
