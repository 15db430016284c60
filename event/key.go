package event

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// A key is the primary-key tuple of a row, encoded as a sequence of tagged
// values so that filters can route an event without its schema:
//
//	tag 0 null
//	tag 1 int64:  8 bytes, big-endian
//	tag 2 uint64: 8 bytes, big-endian
//	tag 3 string: uvarint length, UTF-8 bytes
//	tag 4 bytes:  uvarint length, bytes
//
// Sources encode exact numeric types that do not fit 64 bits (DECIMAL keys,
// for example) and temporal keys as their canonical string.
const (
	keyNull   = 0
	keyInt    = 1
	keyUint   = 2
	keyString = 3
	keyBytes  = 4
)

// AppendKeyNull appends a NULL key component.
func AppendKeyNull(dst []byte) []byte { return append(dst, keyNull) }

// AppendKeyInt appends a signed integer key component.
func AppendKeyInt(dst []byte, v int64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, keyInt), uint64(v))
}

// AppendKeyUint appends an unsigned integer key component.
func AppendKeyUint(dst []byte, v uint64) []byte {
	return binary.BigEndian.AppendUint64(append(dst, keyUint), v)
}

// AppendKeyString appends a string key component.
func AppendKeyString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(append(dst, keyString), uint64(len(s)))
	return append(dst, s...)
}

// AppendKeyBytes appends a binary key component.
func AppendKeyBytes(dst []byte, b []byte) []byte {
	dst = binary.AppendUvarint(append(dst, keyBytes), uint64(len(b)))
	return append(dst, b...)
}

// DecodeKey returns the components of an encoded key as nil, int64, uint64,
// string or []byte values, in key-column order.
func DecodeKey(b []byte) ([]any, error) {
	var out []any
	for len(b) > 0 {
		tag := b[0]
		b = b[1:]
		switch tag {
		case keyNull:
			out = append(out, nil)
		case keyInt, keyUint:
			if len(b) < 8 {
				return nil, fmt.Errorf("%w: key integer truncated", ErrCorrupt)
			}
			v := binary.BigEndian.Uint64(b)
			b = b[8:]
			if tag == keyInt {
				out = append(out, int64(v))
			} else {
				out = append(out, v)
			}
		case keyString, keyBytes:
			l, n := binary.Uvarint(b)
			if n <= 0 || l > uint64(len(b)-n) {
				return nil, fmt.Errorf("%w: key length", ErrCorrupt)
			}
			v := b[n : n+int(l)]
			b = b[n+int(l):]
			if tag == keyString {
				out = append(out, string(v))
			} else {
				out = append(out, append([]byte(nil), v...))
			}
		default:
			return nil, fmt.Errorf("%w: key tag %d", ErrCorrupt, tag)
		}
	}
	return out, nil
}

// KeyInt returns the value of a key made of exactly one integer component,
// which is what RANGE partitions and numeric MOD partitions work on.
// Unsigned values above MaxInt64 are reported as not ok.
func KeyInt(b []byte) (v int64, ok bool) {
	if len(b) != 9 {
		return 0, false
	}
	u := binary.BigEndian.Uint64(b[1:])
	switch b[0] {
	case keyInt:
		return int64(u), true
	case keyUint:
		if u > 1<<63-1 {
			return 0, false
		}
		return int64(u), true
	}
	return 0, false
}

// KeyBucket returns the MOD partition bucket of a key among n buckets, as
// Databus defined it for numeric keys: |key| mod n for a single integer key.
// Every other key (composite, string, binary) goes by the CRC-32C of its
// encoding, mod n. n must be > 0.
func KeyBucket(b []byte, n uint32) uint32 {
	return uint32(KeyModBase(b) % uint64(n))
}

// KeyModBase returns the number whose remainder mod n is the key's MOD
// bucket among n (KeyBucket): the magnitude of a single integer key, the
// CRC-32C of the encoding of any other key. Stores index it to push MOD
// filters into their queries.
func KeyModBase(b []byte) uint64 {
	if len(b) == 9 && (b[0] == keyInt || b[0] == keyUint) {
		u := binary.BigEndian.Uint64(b[1:])
		if b[0] == keyInt && int64(u) < 0 {
			u = -u // two's complement magnitude; MinInt64 stays 1<<63, still exact
		}
		return u
	}
	return uint64(crc32.Checksum(b, castagnoli))
}
