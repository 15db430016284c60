package server

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
)

// The snapshot's `after` token is a store.Cursor made opaque and URL-safe:
// clients copy it from the X-Databus-Snapshot-After header into their
// checkpoint's bootstrap.after and never look inside. Layout (format
// version 1), before base64url encoding without padding:
//
//	offset size field
//	0      1    token version (1)
//	1      4    logical source id, big-endian
//	5      K    encoded key (package event)
//	5+K    4    CRC-32C (Castagnoli) of bytes 0..5+K
//
// The checksum and the key check make a truncated or edited token fail
// loudly (400 bad_checkpoint) instead of silently repositioning the
// snapshot, which would skip or repeat rows.
const tokenVersion = 1

// maxTokenLen bounds an encoded token; a key is far smaller, and a
// checkpoint is at most checkpoint.MaxSize anyway.
const maxTokenLen = 16 << 10

var tokenEncoding = base64.RawURLEncoding.Strict()

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errToken is wrapped by every error decodeAfter returns.
var errToken = errors.New("malformed bootstrap.after token")

// encodeAfter returns the token of c.
func encodeAfter(c store.Cursor) string {
	b := make([]byte, 0, 1+4+len(c.Key)+4)
	b = append(b, tokenVersion)
	b = binary.BigEndian.AppendUint32(b, c.Source)
	b = append(b, c.Key...)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	return tokenEncoding.EncodeToString(b)
}

// decodeAfter parses a token made by encodeAfter. "" is the start of the
// snapshot (nil cursor). The returned key does not alias s.
func decodeAfter(s string) (*store.Cursor, error) {
	if s == "" {
		return nil, nil
	}
	if len(s) > maxTokenLen {
		return nil, fmt.Errorf("%w: %d characters, more than %d", errToken, len(s), maxTokenLen)
	}
	b, err := tokenEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url: %v", errToken, err)
	}
	if len(b) < 1+4+4 {
		return nil, fmt.Errorf("%w: %d bytes, too short", errToken, len(b))
	}
	if b[0] != tokenVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", errToken, b[0], tokenVersion)
	}
	body, sum := b[:len(b)-4], binary.BigEndian.Uint32(b[len(b)-4:])
	if crc32.Checksum(body, castagnoli) != sum {
		return nil, fmt.Errorf("%w: checksum mismatch (was it truncated or edited?)", errToken)
	}
	key := body[5:]
	if _, err := event.DecodeKey(key); err != nil {
		return nil, fmt.Errorf("%w: bad key: %v", errToken, err)
	}
	return &store.Cursor{Source: binary.BigEndian.Uint32(body[1:5]), Key: key}, nil
}
