package filter

import (
	"errors"
	"testing"

	"github.com/databus-go/databus/event"
)

func TestParsePartition(t *testing.T) {
	for _, s := range []string{"mod:3/8", "mod:0,1,5/8", "range:0-1000", "range:-5-10,10-20", "mod:0/1"} {
		p, err := ParsePartition(s)
		if err != nil {
			t.Fatalf("ParsePartition(%q): %v", s, err)
		}
		if p.String() != s {
			t.Errorf("String() = %q, want %q", p.String(), s)
		}
	}
	for _, s := range []string{"mod", "mod:3", "mod:8/8", "mod:1/0", "mod:x/8", "mod:1/70000", "range:", "range:5-5", "range:9-1", "range:a-b", "range:0-10,5-20", "hash:1/2", "range:1"} {
		if _, err := ParsePartition(s); !errors.Is(err, ErrSyntax) {
			t.Errorf("ParsePartition(%q) = %v, want ErrSyntax", s, err)
		}
	}
}

func TestModBucketsCoverEveryKeyOnce(t *testing.T) {
	const n = 4
	var parts []Partition
	for b := 0; b < n; b++ {
		p, err := ParsePartition("mod:" + string(rune('0'+b)) + "/4")
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, p)
	}
	keys := [][]byte{event.AppendKeyString(nil, "alice"), event.AppendKeyInt(event.AppendKeyString(nil, "x"), 7)}
	for i := int64(-50); i < 50; i++ {
		keys = append(keys, event.AppendKeyInt(nil, i), event.AppendKeyUint(nil, uint64(i)))
	}
	keys = append(keys, event.AppendKeyInt(nil, -1<<63))
	for _, k := range keys {
		hits := 0
		for i := range parts {
			if parts[i].MatchKey(k) {
				hits++
			}
		}
		if hits != 1 {
			t.Errorf("key %x matched %d partitions, want 1", k, hits)
		}
	}
	if !parts[3].MatchKey(event.AppendKeyInt(nil, 7)) || !parts[3].MatchKey(event.AppendKeyInt(nil, -7)) {
		t.Error("mod bucket of ±7 among 4 is not 3")
	}
}

func TestRange(t *testing.T) {
	p, _ := ParsePartition("range:0-10,20-30")
	for k, want := range map[int64]bool{-1: false, 0: true, 9: true, 10: false, 19: false, 20: true, 29: true, 30: false} {
		if got := p.MatchKey(event.AppendKeyInt(nil, k)); got != want {
			t.Errorf("range match %d = %v", k, got)
		}
	}
	if p.MatchKey(event.AppendKeyString(nil, "5")) {
		t.Error("range matched a string key")
	}
}

func TestFilterPassesMarkers(t *testing.T) {
	p, _ := ParsePartition("mod:0/2")
	f := Filter{Sources: map[uint32]struct{}{1: {}}, Partition: p}
	if !f.Match(event.Header{Kind: event.KindEndOfWindow}) || !f.Match(event.Header{Kind: event.KindSchemaChange, Source: 9}) {
		t.Error("a marker was filtered out")
	}
	if f.Match(event.Header{Kind: event.KindData, Source: 2, Key: event.AppendKeyInt(nil, 0)}) {
		t.Error("a data event of another source passed")
	}
	if !f.Match(event.Header{Kind: event.KindData, Source: 1, Key: event.AppendKeyInt(nil, 2)}) {
		t.Error("a data event in the partition was dropped")
	}
}

func FuzzParsePartition(f *testing.F) {
	for _, s := range []string{"mod:3/8", "range:-5-10,10-20", "mod:0,1/2"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePartition(s)
		if err != nil {
			return
		}
		q, err := ParsePartition(p.String())
		if err != nil || q.String() != p.String() {
			t.Fatalf("%q -> %q does not round-trip: %v", s, p.String(), err)
		}
		p.MatchKey(event.AppendKeyInt(nil, 42))
	})
}
