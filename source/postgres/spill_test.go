package postgres

import (
	"errors"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/databus-go/databus/event"
)

// TestSpiller writes two interleaved transactions' events through the
// shared buffer, aborts subtransactions (past the bound, which compacts the
// file), writes on, and replays: the events not rolled back, in order.
func TestSpiller(t *testing.T) {
	dir := t.TempDir()
	s := newSpiller(dir)
	s.maxAborted = 2
	ev := func(i int, sub uint32) event.Event {
		e := event.Event{Kind: event.KindData, Op: event.OpInsert, Source: 1, SchemaVersion: 1,
			Key: event.AppendKeyInt(nil, int64(i)), Payload: []byte{byte(sub), byte(i), 0}}
		if i%3 == 0 {
			e.Op, e.Payload, e.Before, e.HasBefore = event.OpDelete, nil, []byte{byte(i)}, true
		}
		if i%10 == 0 {
			e = event.Event{Kind: event.KindSchemaChange, Source: 1, SchemaVersion: 2, Payload: []byte(`{"ddl":"truncate"}`)}
		}
		return e
	}
	var a, b *spillFile
	var wantA, wantB []event.Event
	big := make([]byte, 3*spillIOSize) // a row larger than the buffer
	for i := range 1000 {
		sub := uint32(100 + i/100) // subtransactions 100..109 of xid 100
		e := ev(i, sub)
		if i == 500 {
			e.Payload = big
		}
		if err := s.write(&a, 100, sub, &e); err != nil {
			t.Fatal(err)
		}
		if sub != 102 && sub != 104 && sub != 105 && sub != 108 {
			wantA = append(wantA, e)
		}
		e = ev(i, 7)
		if err := s.write(&b, 200, 200, &e); err != nil {
			t.Fatal(err)
		}
		wantB = append(wantB, e)
		if i%50 == 0 {
			if err := s.flush(); err != nil { // a Stream Stop
				t.Fatal(err)
			}
		}
		switch i {
		case 299, 499: // the last events of 102, then 104
			if err := s.abort(a, sub); err != nil {
				t.Fatal(err)
			}
		case 599:
			if err := s.abort(a, 105); err != nil { // the third: compaction
				t.Fatal(err)
			}
			if len(a.aborted) != 0 || a.events != 300 {
				t.Fatalf("after compaction: aborted %v, %d events", a.aborted, a.events)
			}
		case 899:
			if err := s.abort(a, 108); err != nil {
				t.Fatal(err)
			}
		}
	}
	replay := func(sf *spillFile) []event.Event {
		t.Helper()
		var got []event.Event
		var ar arena
		resets := 0
		err := s.replay(sf, &ar, func() error {
			if len(got)%64 == 63 { // as chunks do; the events already read were copied
				ar.reset()
				resets++
			}
			return nil
		}, func(e event.Event) error {
			e.Key, e.Payload, e.Before = clone(e.Key), clone(e.Payload), clone(e.Before)
			got = append(got, e)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if diff := cmp.Diff(wantA, replay(a)); diff != "" {
		t.Fatalf("transaction a (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantB, replay(b)); diff != "" {
		t.Fatalf("transaction b (-want +got):\n%s", diff)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("%d files, want 2", len(ents))
	}

	// A damaged file is an error, never wrong events.
	if _, err := a.f.WriteAt([]byte{0xff}, int64(spillHdrSize+recordHeader+2)); err != nil {
		t.Fatal(err)
	}
	var ar arena
	err := s.replay(a, &ar, func() error { return nil }, func(event.Event) error { return nil })
	if !errors.Is(err, errSpill) || !errors.Is(err, event.ErrChecksum) {
		t.Fatalf("replay of a damaged file: %v", err)
	}
	if retryable(err) != true {
		t.Fatalf("a spill error is not retryable")
	}

	s.remove(a)
	s.remove(b)
	s.remove(nil)
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("files left: %v", ents)
	}
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte{}, b...)
}

// TestArena: slices never overlap until a reset, which reuses the buffers.
func TestArena(t *testing.T) {
	var a arena
	var got [][]byte
	for i := range 2000 {
		n := i % 300
		if i == 1000 {
			n = 200 << 10 // larger than a buffer: its own, not kept by reset
		}
		b := a.alloc(n)
		if len(b) != n || cap(b) != n {
			t.Fatalf("alloc(%d): len %d cap %d", n, len(b), cap(b))
		}
		for j := range b {
			b[j] = byte(i)
		}
		got = append(got, b)
	}
	for i, b := range got {
		for _, c := range b {
			if c != byte(i) {
				t.Fatalf("slice %d was overwritten", i)
			}
		}
	}
	bufs := len(a.bufs)
	a.reset()
	if a.held != 0 || len(a.bufs) != bufs-1 {
		t.Fatalf("after reset: held %d, %d buffers of %d", a.held, len(a.bufs), bufs)
	}
	for range 2000 {
		a.alloc(150)
	}
	if len(a.bufs) > bufs {
		t.Fatalf("%d buffers after a reset and the same allocations, %d before", len(a.bufs), bufs)
	}
}
