package event

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func sample() []Event {
	sc, _ := NewSchemaChange(7, 100, SchemaChange{Source: 2, Name: "main.t", Version: 3, Key: []string{"id"}, Avro: []byte(`{"type":"record","name":"t","fields":[]}`)})
	return []Event{
		{Kind: KindData, Op: OpInsert, SCN: 7, Timestamp: 100, Source: 2, SchemaVersion: 3, Key: AppendKeyInt(nil, -5), Payload: []byte("row")},
		{Kind: KindData, Op: OpUpdate, SCN: 7, Timestamp: 100, Source: 2, SchemaVersion: 3, Key: AppendKeyString(nil, "é"), Payload: []byte("new"), Before: []byte("old"), HasBefore: true},
		{Kind: KindData, Op: OpDelete, SCN: 7, Timestamp: 100, Source: 2, SchemaVersion: 3, Key: AppendKeyUint(nil, 1<<63), Before: []byte{}, HasBefore: true},
		sc,
		EndOfWindow(7, 100, 3, "0-1-42"),
	}
}

func TestRoundTrip(t *testing.T) {
	var buf []byte
	var err error
	for _, e := range sample() {
		if buf, err = AppendFrame(buf, &e); err != nil {
			t.Fatal(err)
		}
	}
	var got []Event
	for b := buf; len(b) > 0; {
		e, n, err := Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		if n != e.Size() {
			t.Errorf("consumed %d bytes of a %d-byte frame", n, e.Size())
		}
		h, hn := PeekHeader(b)
		if hn != n || h.SCN != e.SCN || h.Source != e.Source || h.Kind != e.Kind || !bytes.Equal(h.Key, e.Key) {
			t.Errorf("PeekHeader = %+v, %d; Decode = %+v, %d", h, hn, e, n)
		}
		got = append(got, e)
		b = b[n:]
	}
	norm := func(es []Event) []Event {
		for i := range es {
			if len(es[i].Before) == 0 {
				es[i].Before = nil
			}
			if len(es[i].Payload) == 0 {
				es[i].Payload = nil
			}
			if len(es[i].Key) == 0 {
				es[i].Key = nil
			}
		}
		return es
	}
	if d := cmp.Diff(norm(sample()), norm(got)); d != "" {
		t.Errorf("round trip (-want +got):\n%s", d)
	}
	if c, txid, ok := got[4].WindowInfo(); !ok || c != 3 || txid != "0-1-42" {
		t.Errorf("WindowInfo = %d %q %v", c, txid, ok)
	}
	if sc, err := got[3].SchemaChange(); err != nil || sc.Name != "main.t" || sc.Version != 3 {
		t.Errorf("SchemaChange = %+v, %v", sc, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	e := sample()[1]
	good, _ := AppendFrame(nil, &e)
	for i := 1; i < len(good); i++ {
		if _, _, err := Decode(good[:i]); !errors.Is(err, ErrShort) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("truncated to %d bytes: %v", i, err)
		}
	}
	for i := range good {
		bad := append([]byte(nil), good...)
		bad[i] ^= 0x40
		if _, _, err := Decode(bad); err == nil {
			t.Errorf("a flipped bit at byte %d went unnoticed", i)
		}
	}
	v2 := append([]byte(nil), good...)
	v2[0] = 2
	if _, _, err := Decode(v2); !errors.Is(err, ErrVersion) {
		t.Errorf("format version 2: %v", err)
	}
	bad := Event{Kind: KindData, Op: 9}
	b, _ := AppendFrame(nil, &bad)
	if _, _, err := Decode(b); !errors.Is(err, ErrCorrupt) {
		t.Errorf("unknown op decoded: %v", err)
	}
}

func TestKeys(t *testing.T) {
	k := AppendKeyBytes(AppendKeyNull(AppendKeyString(AppendKeyUint(AppendKeyInt(nil, -1), 2), "x")), []byte{0})
	got, err := DecodeKey(k)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]any{int64(-1), uint64(2), "x", nil, []byte{0}}, got); d != "" {
		t.Error(d)
	}
	if _, err := DecodeKey([]byte{3, 9, 'a'}); err == nil {
		t.Error("a truncated string key decoded")
	}
	if v, ok := KeyInt(AppendKeyUint(nil, 1<<63)); ok {
		t.Errorf("KeyInt of 2^63 = %d", v)
	}
}

func FuzzDecode(f *testing.F) {
	var buf []byte
	for _, e := range sample() {
		buf, _ = AppendFrame(buf, &e)
		f.Add(append([]byte(nil), buf...))
	}
	f.Add([]byte{1, 1, 1, 0, 0, 0, 0, 52})
	f.Fuzz(func(t *testing.T, b []byte) {
		for len(b) > 0 {
			e, n, err := Decode(b)
			if err != nil {
				return
			}
			again, err := AppendFrame(nil, &e)
			if err != nil || !bytes.Equal(again, b[:n]) {
				t.Fatalf("re-encoding a decoded frame changed it: %v", err)
			}
			DecodeKey(e.Key)
			e.SchemaChange()
			b = b[n:]
		}
	})
}

func FuzzDecodeKey(f *testing.F) {
	f.Add(AppendKeyString(AppendKeyInt(nil, 5), "k"))
	f.Fuzz(func(t *testing.T, b []byte) {
		DecodeKey(b)
		KeyInt(b)
		KeyBucket(b, 7)
	})
}

// BenchmarkEncode and BenchmarkDecode measure one ~200-byte data event.
func benchEvent() Event {
	return Event{Kind: KindData, Op: OpUpdate, SCN: 1 << 40, Timestamp: 1, Source: 3, SchemaVersion: 1,
		Key: AppendKeyInt(nil, 12345), Payload: bytes.Repeat([]byte("p"), 100), Before: bytes.Repeat([]byte("b"), 40), HasBefore: true}
}

func BenchmarkEncode(b *testing.B) {
	e := benchEvent()
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	b.SetBytes(int64(e.Size()))
	for i := 0; i < b.N; i++ {
		buf, _ = AppendFrame(buf[:0], &e)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/event")
}

func BenchmarkDecode(b *testing.B) {
	e := benchEvent()
	buf, _ := AppendFrame(nil, &e)
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	for i := 0; i < b.N; i++ {
		if _, _, err := Decode(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/event")
}
