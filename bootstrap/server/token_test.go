package server

import (
	"bytes"
	"encoding/base64"
	"errors"
	"hash/crc32"
	"strings"
	"testing"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
)

func TestAfterToken(t *testing.T) {
	for _, c := range []store.Cursor{
		{Source: 0, Key: nil},
		{Source: 1, Key: event.AppendKeyInt(nil, -5)},
		{Source: 1<<32 - 1, Key: event.AppendKeyString(event.AppendKeyUint(nil, 1<<63), "a/b+c=d?&")},
		{Source: 7, Key: event.AppendKeyBytes(event.AppendKeyNull(nil), bytes.Repeat([]byte{0xff}, 300))},
	} {
		tok := encodeAfter(c)
		for _, r := range tok {
			if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_') {
				t.Fatalf("token %q is not URL-safe", tok)
			}
		}
		got, err := decodeAfter(tok)
		if err != nil || got.Source != c.Source || !bytes.Equal(got.Key, c.Key) {
			t.Errorf("%+v: token %q decodes to %+v, %v", c, tok, got, err)
		}
	}
	if c, err := decodeAfter(""); c != nil || err != nil {
		t.Errorf(`"" decodes to %+v, %v; want the start`, c, err)
	}
	good := encodeAfter(store.Cursor{Source: 3, Key: event.AppendKeyInt(nil, 42)})
	for _, bad := range []string{
		"!", "AAAA", good[:len(good)-1], good + "A", "B" + good[1:],
		encodeRaw([]byte{2, 0, 0, 0, 1}),          // version 2
		encodeRaw([]byte{1, 0, 0, 0, 1, 9}),       // key tag 9
		encodeRaw([]byte{1, 0, 0, 0, 1, 1, 0, 0}), // truncated integer key
		string(make([]byte, maxTokenLen+1)),       // too long
		nonCanonical(t),
	} {
		if c, err := decodeAfter(bad); !errors.Is(err, errToken) {
			t.Errorf("%q decodes to %+v, %v; want an error", bad, c, err)
		}
	}
}

// encodeRaw encodes body with a valid checksum, so that only the fields
// are wrong.
func encodeRaw(body []byte) string {
	b := append([]byte(nil), body...)
	sum := make([]byte, 4)
	c := crc32.Checksum(b, castagnoli)
	sum[0], sum[1], sum[2], sum[3] = byte(c>>24), byte(c>>16), byte(c>>8), byte(c)
	return tokenEncoding.EncodeToString(append(b, sum...))
}

// FuzzAfterToken feeds arbitrary tokens to the decoder: it never panics,
// and whatever it accepts is exactly the encoding of what it returns, so
// two different tokens never name the same position.
func FuzzAfterToken(f *testing.F) {
	f.Add("")
	f.Add(encodeAfter(store.Cursor{Source: 1, Key: event.AppendKeyInt(nil, 1)}))
	f.Add(encodeAfter(store.Cursor{Source: 9, Key: event.AppendKeyString(nil, "x")}))
	f.Add("AQAAAAE")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeAfter(s)
		if err != nil {
			if !errors.Is(err, errToken) {
				t.Fatalf("error %v does not wrap errToken", err)
			}
			return
		}
		if c == nil {
			if s != "" {
				t.Fatalf("%q decodes to the start", s)
			}
			return
		}
		if again := encodeAfter(*c); again != s {
			t.Fatalf("%q decodes to %+v, which encodes to %q", s, c, again)
		}
	})
}

// nonCanonical returns a token that decodes to a valid cursor by a lax
// base64 decoder, but with non-zero unused bits in its last character.
func nonCanonical(t *testing.T) string {
	tok := encodeAfter(store.Cursor{Source: 1, Key: event.AppendKeyNull(event.AppendKeyInt(nil, 42))}) // 19 bytes
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, tok[len(tok)-1])
	if i%16 != 0 {
		t.Fatalf("token %q: its last character carries %d unused bits", tok, i%16)
	}
	bad := tok[:len(tok)-1] + string(alphabet[i|1])
	if _, err := base64.RawURLEncoding.DecodeString(bad); err != nil {
		t.Fatalf("lax decoding of %q: %v", bad, err)
	}
	return bad
}
