package storetest

import (
	"bytes"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
)

// farFuture is a purge time after every window of the suite.
var farFuture = time.Unix(0, tsOf(1<<30))

// checkTombstones purges every tombstone and compares the count with the
// model's: the only way the interface shows tombstones.
func checkTombstones(t *testing.T, s store.Store, m *model) {
	t.Helper()
	want := m.tombstones()
	checkPurge(t, s, m, store.PurgePolicy{TombstonesBefore: farFuture})
	if want == 0 {
		return
	}
	checkSnapshot(t, s, m, everything, nil, 1000, 1<<20)
}

// checkAllAsOf checks the snapshot at every SCN from lo to hi, and at
// everything.
func checkAllAsOf(t *testing.T, s store.Store, m *model, lo, hi uint64) {
	t.Helper()
	for asOf := lo; asOf <= hi; asOf++ {
		checkSnapshot(t, s, m, asOf, nil, 1000, 1<<20)
	}
	checkSnapshot(t, s, m, everything, nil, 3, 1<<20)
}

func testFolding(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	b := &store.Batch{After: 10, Windows: []store.Window{
		// Several changes of one key in one window: the last wins.
		newWin(11).
			upsert(1, ikey(1), "a").upsert(1, ikey(1), "b").
			del(1, ikey(2)). // never held: a tombstone all the same
			upsert(1, ikey(3), "x").del(1, ikey(3)).
			del(1, ikey(4)).upsert(1, ikey(4), "back").
			upsert(2, ikey(1), "other source, same key").
			window(),
	}}
	apply(t, s, b)
	m.apply(b)
	checkAllAsOf(t, s, m, 10, 11)

	// Several changes of one key across the windows of one batch.
	b = &store.Batch{After: 11, Windows: []store.Window{
		newWin(12).upsert(1, ikey(5), "v12").upsert(1, ikey(6), "v12").window(),
		newWin(13).upsert(1, ikey(5), "v13").del(1, ikey(6)).upsert(1, ikey(1), "c").window(),
		newWin(14).del(1, ikey(5)).upsert(1, ikey(6), "v14").window(),
		newWin(15).upsert(1, ikey(5), "v15").del(2, ikey(1)).window(),
		newWin(16).upsert(1, ikey(7), "v16").window(),
		newWin(17).del(1, ikey(7)).window(),
	}}
	apply(t, s, b)
	m.apply(b)
	checkAllAsOf(t, s, m, 10, 17)

	// And across batches, over rows already stored.
	b = &store.Batch{After: 17, Windows: []store.Window{
		newWin(18).upsert(1, ikey(1), "d").del(1, ikey(4)).upsert(1, ikey(2), "was a tombstone").upsert(1, ikey(7), "again").window(),
	}}
	apply(t, s, b)
	m.apply(b)
	checkAllAsOf(t, s, m, 10, 18)
	checkTombstones(t, s, m)
}

func testFoldingTruncate(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	w := newWin(11)
	for k := int64(1); k <= 6; k++ {
		w.upsert(1, ikey(k), fmt.Sprint("s1 ", k)).upsert(2, ikey(k), fmt.Sprint("s2 ", k))
	}
	w.del(1, ikey(6))
	b := &store.Batch{After: 10, Windows: []store.Window{w.window()}}
	apply(t, s, b)
	m.apply(b)

	// A truncate between rows of the same window: rows before it are gone
	// (stored ones and ones of this very window), rows after it stay.
	b = &store.Batch{After: 11, Windows: []store.Window{
		newWin(12).
			upsert(1, ikey(1), "new before").upsert(1, ikey(7), "new key before").del(1, ikey(2)).
			upsert(2, ikey(1), "s2 changed").
			truncate(1).
			upsert(1, ikey(3), "after").upsert(1, ikey(8), "new key after").
			window(),
		newWin(13).upsert(1, ikey(9), "later window").upsert(1, ikey(3), "after'").window(),
	}}
	apply(t, s, b)
	m.apply(b)
	checkAllAsOf(t, s, m, 10, 13)

	// Two truncates in one batch, and a truncate in a batch of its own.
	b = &store.Batch{After: 13, Windows: []store.Window{
		newWin(14).upsert(1, ikey(10), "x").truncate(1).upsert(1, ikey(11), "y").window(),
		newWin(15).upsert(1, ikey(12), "z").truncate(1).truncate(2).upsert(2, ikey(1), "s2 after").window(),
	}}
	apply(t, s, b)
	m.apply(b)
	checkAllAsOf(t, s, m, 10, 15)
	b = &store.Batch{After: 15, Windows: []store.Window{newWin(16).truncate(2).window()}}
	apply(t, s, b)
	m.apply(b)
	b = &store.Batch{After: 16, Windows: []store.Window{newWin(17).truncate(9).upsert(1, ikey(1), "after all").window()}}
	apply(t, s, b)
	m.apply(b)
	checkAllAsOf(t, s, m, 10, 17)
	checkTombstones(t, s, m)
}

func testSnapshotAsOf(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	after := uint64(0)
	for scn := uint64(1); scn <= 20; scn++ {
		w := newWin(scn)
		for k := int64(0); k < 8; k++ {
			switch {
			case (int64(scn)+k)%5 == 0:
				w.del(uint32(1+k%2), ikey(k))
			case (int64(scn)*k)%3 == 0:
				w.upsert(uint32(1+k%2), ikey(k), fmt.Sprintf("k%d at %d", k, scn))
			}
		}
		b := &store.Batch{After: after, Windows: []store.Window{w.window()}}
		apply(t, s, b)
		m.apply(b)
		after = scn
	}
	checkAllAsOf(t, s, m, 0, 21)
	checkSnapshot(t, s, m, math.MaxInt64, nil, 5, 1<<20)
	checkSnapshot(t, s, m, math.MaxInt64+1, nil, 5, 1<<20)
}

// bulk applies n rows over three sources with payloads of 0..maxPayload
// bytes, in batches, and returns the model.
func bulk(t *testing.T, s store.Store, n, maxPayload int, rng *rand.Rand) *model {
	m := newModel()
	after := uint64(1000)
	for i := 0; i < n; {
		b := &store.Batch{After: after}
		for j := 0; j < 10 && i < n; j++ {
			after++
			w := newWin(after)
			for k := 0; k < 10 && i < n; k, i = k+1, i+1 {
				w.upsert(uint32(1+i%3), ikey(int64(i*7919%100_003)), strings.Repeat("p", rng.IntN(maxPayload+1)))
			}
			b.Windows = append(b.Windows, w.window())
		}
		apply(t, s, b)
		m.apply(b)
	}
	return m
}

func testSnapshotPaging(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	const n = 200
	m := bulk(t, s, n, 300, rand.New(rand.NewPCG(1, 2)))
	for _, c := range []struct{ maxRows, maxBytes int }{
		{1, 1 << 20}, {7, 1 << 20}, {n - 1, 1 << 20}, {n, 1 << 20}, {n + 1, 1 << 20}, {10_000, 1 << 20},
		{10_000, 1}, {10_000, 100}, {10_000, 1000}, {3, 1000}, {1, 1},
	} {
		checkSnapshot(t, s, m, everything, nil, c.maxRows, c.maxBytes)
	}
	// Pages bounded by MaxRows only are full, and the last one ends the
	// snapshot: no empty page after it.
	for _, k := range []int{1, 7, 100, n, n + 1} {
		pages := 0
		var after *store.Cursor
		for {
			p, err := s.Snapshot(ctx, store.SnapshotQuery{AsOf: everything, After: after, MaxRows: k, MaxBytes: 64 << 20})
			if err != nil {
				t.Fatal(err)
			}
			pages++
			if p.Next == nil {
				break
			}
			if p.Rows != k {
				t.Fatalf("MaxRows %d: a page that is not the last holds %d rows", k, p.Rows)
			}
			after = p.Next
		}
		if want := (n + k - 1) / k; pages != want {
			t.Fatalf("MaxRows %d over %d rows took %d pages, want %d (Next must be nil on the page holding the last row)", k, n, pages, want)
		}
	}
	// A row larger than MaxBytes still makes a page of one row.
	p, err := s.Snapshot(ctx, store.SnapshotQuery{AsOf: everything, MaxRows: 10, MaxBytes: 1})
	if err != nil || p.Rows != 1 || p.Next == nil {
		t.Fatalf("Snapshot(MaxBytes 1) = %d rows, Next %v, %v; want one row and a Next", p.Rows, p.Next, err)
	}
}

func testSnapshotCursor(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	b := &store.Batch{After: 0, Windows: []store.Window{
		newWin(1).upsert(1, ikey(1), "a").upsert(1, ikey(3), "b").upsert(1, skey("m"), "c").
			upsert(3, ikey(1), "d").upsert(3, skey(""), "e").upsert(5, ukey(1), "f").window(),
		newWin(2).del(1, ikey(3)).window(),
	}}
	apply(t, s, b)
	m.apply(b)
	cursors := []store.Cursor{
		{Source: 0, Key: nil},
		{Source: 1, Key: nil},
		{Source: 1, Key: ikey(1)},
		{Source: 1, Key: ikey(2)}, // between rows
		{Source: 1, Key: ikey(3)}, // a tombstone
		{Source: 1, Key: skey("zzz")},
		{Source: 2, Key: ikey(0)}, // a source without rows
		{Source: 3, Key: []byte{0}},
		{Source: 3, Key: skey("")},
		{Source: 5, Key: ukey(1)}, // the last row
		{Source: 5, Key: ukey(2)}, // past it
		{Source: math.MaxUint32, Key: bytes.Repeat([]byte{0xff}, 20)},
	}
	for _, c := range cursors {
		var want []*mrow
		for _, r := range m.snapshot(everything, nil) {
			if cmpRow(r.src, r.key, c.Source, c.Key) > 0 {
				want = append(want, r)
			}
		}
		p, err := s.Snapshot(ctx, store.SnapshotQuery{AsOf: everything, After: &c, MaxRows: 100, MaxBytes: 1 << 20})
		if err != nil {
			t.Fatalf("Snapshot(after %+v): %v", c, err)
		}
		var wantFrames []byte
		for _, r := range want {
			wantFrames = append(wantFrames, r.frame...)
		}
		if p.Rows != len(want) || !bytes.Equal(p.Frames, wantFrames) || p.Next != nil {
			t.Fatalf("Snapshot(after %+v) = %d rows (Next %v), want %d rows and a nil Next", c, p.Rows, p.Next, len(want))
		}
	}
}

func testSnapshotDst(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := bulk(t, s, 20, 10, rand.New(rand.NewPCG(3, 4)))
	var want []byte
	for _, r := range m.snapshot(everything, nil) {
		want = append(want, r.frame...)
	}
	dst := bytes.Repeat([]byte{0xee}, 100)
	p, err := s.Snapshot(ctx, store.SnapshotQuery{AsOf: everything, MaxRows: 100, MaxBytes: 1 << 20, Dst: dst})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.Frames, want) {
		t.Fatalf("Snapshot with a Dst of old bytes returned %d bytes, want exactly the %d bytes of the rows", len(p.Frames), len(want))
	}
	lp, err := s.Log(ctx, store.LogQuery{After: 1000, UpTo: everything, MaxBytes: 1 << 20, Dst: dst})
	if err != nil {
		t.Fatal(err)
	}
	var wantLog []byte
	for _, w := range m.log(1000, everything, nil) {
		wantLog = append(wantLog, w...)
	}
	if !bytes.Equal(lp.Frames, wantLog) {
		t.Fatalf("Log with a Dst of old bytes returned %d bytes, want exactly the %d bytes of the windows", len(lp.Frames), len(wantLog))
	}
}

// filterKeys are keys of every shape filters treat differently.
func filterKeys() [][]byte {
	var keys [][]byte
	for _, v := range []int64{0, 1, 2, 3, 7, 8, 15, 99, 100, 101, 999, 1000, 5000, 5999, 6000, -1, -2, -7, -8, -100, -1000, -1001,
		math.MaxInt64, math.MaxInt64 - 1, math.MinInt64, math.MinInt64 + 1, 1 << 40, -(1 << 40)} {
		keys = append(keys, ikey(v))
	}
	for _, v := range []uint64{0, 1, 7, 100, 5000, math.MaxInt64, 1 << 63, 1<<63 + 1, 1<<63 + 7, math.MaxUint64, math.MaxUint64 - 1} {
		keys = append(keys, ukey(v))
	}
	for _, v := range []string{"", "a", "b", "abc", "zzz", "日本", "0", "100", strings.Repeat("long", 40)} {
		keys = append(keys, skey(v))
	}
	keys = append(keys,
		event.AppendKeyBytes(nil, []byte{0, 1, 2}),
		event.AppendKeyBytes(nil, nil),
		event.AppendKeyString(event.AppendKeyInt(nil, 5), "x"),
		event.AppendKeyInt(event.AppendKeyInt(nil, 5), 6),
		event.AppendKeyInt(event.AppendKeyString(nil, "x"), 5),
		event.AppendKeyNull(event.AppendKeyInt(nil, 1)),
		event.AppendKeyNull(nil),
	)
	return keys
}

// filterSet returns the filters the suite checks Snapshot, CountRows and
// Log with.
func filterSet(t *testing.T) []*filter.Filter {
	fs := []*filter.Filter{nil, {}, {Sources: sources(2)}, {Sources: sources(1, 3)}, {Sources: sources()}, {Sources: sources(99)}}
	for _, p := range []string{
		"mod:0/1", "mod:0/2", "mod:1/2", "mod:2/3", "mod:0,3,4/7", "mod:12345/65536", "mod:1,2,3,4,5,6,7/8",
		"range:0-100", "range:-1000-0", "range:-5-5,100-200,6000-7000",
		"range:-9223372036854775808-9223372036854775807", "range:9223372036854775000-9223372036854775807",
		"range:-9223372036854775808--9223372036854775000",
	} {
		fs = append(fs, &filter.Filter{Partition: mustPartition(t, p)}, &filter.Filter{Sources: sources(1, 2), Partition: mustPartition(t, p)})
	}
	// A MOD filter with most of many buckets selected (an implementation
	// may not push such a list into its query).
	big := filter.Partition{Kind: filter.Mod, N: 1000, Buckets: make([]bool, 1000)}
	for i := range big.Buckets {
		big.Buckets[i] = i%5 != 0
	}
	fs = append(fs, &filter.Filter{Partition: big})
	return fs
}

func testFilters(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	keys := filterKeys()
	b := &store.Batch{After: 0}
	for src := uint32(1); src <= 3; src++ {
		w := newWin(uint64(src))
		for i, k := range keys {
			w.upsert(src, k, fmt.Sprintf("s%d k%d", src, i))
		}
		b.Windows = append(b.Windows, w.window())
	}
	w := newWin(4)
	for i, k := range keys {
		if i%4 == 0 {
			w.del(2, k)
		}
	}
	b.Windows = append(b.Windows, w.upsert(4, ikey(1), "s4").window())
	apply(t, s, b)
	m.apply(b)
	for _, f := range filterSet(t) {
		checkSnapshot(t, s, m, everything, f, 7, 1<<20)
		checkSnapshot(t, s, m, 2, f, 1000, 1<<20)
		checkLog(t, s, m, 0, everything, f, 1<<20)
	}
}
