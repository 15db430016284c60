package storetest

import (
	"errors"
	"math"
	"testing"

	"github.com/databus-go/databus/bootstrap/store"
)

func testIdentity(t *testing.T, h Harness) {
	hs := handles{h}
	s, reopen := hs.open(t)
	st := state(t, s)
	if st.ID == "" {
		t.Fatal("State.ID of a new store is empty")
	}
	if again := state(t, s); again.ID != st.ID {
		t.Fatalf("State.ID changed between two calls: %q, then %q", st.ID, again.ID)
	}
	apply(t, s, &store.Batch{After: 10, Windows: []store.Window{newWin(11).upsert(1, ikey(1), "a").window()}})
	if got := state(t, s).ID; got != st.ID {
		t.Fatalf("State.ID changed by Apply: %q, then %q", st.ID, got)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	s2 := reopen(t)
	if got := state(t, s2).ID; got != st.ID {
		t.Fatalf("State.ID changed across reopen: %q, then %q", st.ID, got)
	}

	other, reopenOther := hs.open(t)
	oid := state(t, other).ID
	if oid == "" || oid == st.ID {
		t.Fatalf("two stores have IDs %q and %q, want two different non-empty IDs", st.ID, oid)
	}
	// An empty store keeps its ID too: it was chosen at creation.
	if err := other.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := state(t, reopenOther(t)).ID; got != oid {
		t.Fatalf("State.ID of an empty store changed across reopen: %q, then %q", oid, got)
	}
}

func testEmptyStore(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	checkState(t, s, m)
	checkSnapshot(t, s, m, everything, nil, 10, 1<<20)
	checkSnapshot(t, s, m, 0, nil, 10, 1<<20)
	p, err := s.Log(ctx, store.LogQuery{After: 0, UpTo: everything, MaxBytes: 1 << 20})
	if err != nil {
		t.Fatalf("Log on an empty store: %v", err)
	}
	if p.Windows != 0 || len(p.Frames) != 0 || p.Last != 0 {
		t.Fatalf("Log on an empty store = %d windows, %d bytes, Last %d; want nothing and Last 0", p.Windows, len(p.Frames), p.Last)
	}
	if sc, err := s.Schemas(ctx); err != nil || len(sc) != 0 {
		t.Fatalf("Schemas on an empty store = %v, %v; want none", sc, err)
	}
	if sd, err := s.Seeds(ctx); err != nil || len(sd) != 0 {
		t.Fatalf("Seeds on an empty store = %v, %v; want none", sd, err)
	}
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: farFuture, TombstonesBefore: farFuture})
	checkState(t, s, m)
}

func testFirstBatch(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	b := &store.Batch{After: 100, Windows: []store.Window{
		newWin(101).upsert(1, ikey(1), "one").upsert(1, ikey(2), "two").window(),
		newWin(102).window(), // a heartbeat: no rows
		newWin(105).upsert(2, skey("x"), "x").del(1, ikey(2)).window(),
	}}
	apply(t, s, b)
	m.apply(b)
	st := checkState(t, s, m)
	if st.LowWatermark != 100 || st.Head != 105 || st.HeadTime != tsOf(105) || st.Windows != 3 || st.Empty {
		t.Fatalf("State after the first batch = %+v, want head 105 at its time, low watermark 100 (the batch's After), 3 windows, not empty", st)
	}
	checkSnapshot(t, s, m, everything, nil, 100, 1<<20)
	checkLog(t, s, m, 100, everything, nil, 1<<20)
	if _, err := s.Log(ctx, store.LogQuery{After: 99, UpTo: everything, MaxBytes: 1 << 20}); err == nil {
		t.Fatal("Log(after 99) below the first batch's After succeeded, want *NotHeldError")
	} else if nh, ok := notHeld(err); !ok || nh.After != 99 || nh.LowWatermark != 100 {
		t.Fatalf("Log(after 99) = %v, want *NotHeldError{After: 99, LowWatermark: 100}", err)
	}

	b2 := &store.Batch{After: 105, Windows: []store.Window{newWin(106).upsert(1, ikey(1), "one'").window()}}
	apply(t, s, b2)
	m.apply(b2)
	checkState(t, s, m)
	checkSnapshot(t, s, m, everything, nil, 100, 1<<20)
	checkLog(t, s, m, 100, everything, nil, 1<<20)
}

func testBatchWithoutWindows(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	b := &store.Batch{After: 50, Schemas: testSchemaSet()[:1]}
	apply(t, s, b)
	m.apply(b)
	st := checkState(t, s, m)
	if st.Empty || st.Head != 50 || st.LowWatermark != 50 || st.Windows != 0 {
		t.Fatalf("State after a batch without windows on an empty store = %+v, want head and low watermark 50, not empty", st)
	}
	checkSchemas(t, s, testSchemaSet()[:1])
	if err := s.Apply(ctx, &store.Batch{After: 49}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Apply(after 49) once the head is 50 = %v, want ErrConflict", err)
	}
	b = &store.Batch{After: 50, Windows: []store.Window{newWin(51).upsert(1, ikey(7), "seven").window()}}
	apply(t, s, b)
	m.apply(b)
	b = &store.Batch{After: 51, Seeds: []store.SeedProgress{seed("db.t1", "run1", 3, false)}}
	apply(t, s, b)
	m.apply(b)
	st = checkState(t, s, m)
	if st.Head != 51 || st.HeadTime != tsOf(51) {
		t.Fatalf("a batch without windows moved the head: %+v", st)
	}
	checkSeeds(t, s, []store.SeedProgress{seed("db.t1", "run1", 3, false)})
	checkSnapshot(t, s, m, everything, nil, 10, 1<<20)
}

// rejected checks that a store still equals m and holds exactly the given
// schemas and seeds: what a refused batch must leave behind.
func rejected(t *testing.T, s store.Store, m *model, schemas int, seeds []store.SeedProgress) {
	t.Helper()
	checkState(t, s, m)
	checkSnapshot(t, s, m, everything, nil, 1000, 1<<20)
	if !m.empty {
		checkLog(t, s, m, m.lw, everything, nil, 1<<20)
	}
	checkSchemas(t, s, testSchemaSet()[:schemas])
	checkSeeds(t, s, seeds)
}

func testConflict(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	b := &store.Batch{After: 10, Windows: []store.Window{
		newWin(11).upsert(1, ikey(1), "a").window(),
		newWin(12).upsert(1, ikey(2), "b").window(),
	}, Schemas: testSchemaSet()[:1], Seeds: []store.SeedProgress{seed("db.a", "r", 1, false)}}
	apply(t, s, b)
	m.apply(b)
	seeds := []store.SeedProgress{seed("db.a", "r", 1, false)}

	for _, after := range []uint64{0, 10, 11, 13, 1 << 40} {
		err := s.Apply(ctx, &store.Batch{
			After:   after,
			Windows: []store.Window{newWin(after+1).upsert(1, ikey(1), "stale").del(1, ikey(2)).truncate(2).window()},
			Schemas: testSchemaSet()[1:],
			Seeds:   []store.SeedProgress{seed("db.a", "r2", 9, true), seed("db.b", "r", 1, false)},
		})
		if !errors.Is(err, store.ErrConflict) {
			t.Fatalf("Apply(after %d) with head 12 = %v, want ErrConflict", after, err)
		}
		rejected(t, s, m, 1, seeds)
	}
	b = &store.Batch{After: 12, Windows: []store.Window{newWin(13).upsert(1, ikey(3), "c").window()}}
	apply(t, s, b)
	m.apply(b)
	checkState(t, s, m)
	checkSnapshot(t, s, m, everything, nil, 1000, 1<<20)
}

func testSCNOrder(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()

	// On an empty store a bad batch must leave it empty.
	for _, scns := range [][]uint64{{10}, {9}, {11, 11}, {12, 11}} {
		err := s.Apply(ctx, badBatch(10, scns))
		if err == nil || errors.Is(err, store.ErrConflict) {
			t.Fatalf("Apply(after 10, windows %v) on an empty store = %v, want an error that is not ErrConflict", scns, err)
		}
		rejected(t, s, m, 0, nil)
	}

	b := &store.Batch{After: 10, Windows: []store.Window{newWin(11).upsert(1, ikey(1), "a").window()}}
	apply(t, s, b)
	m.apply(b)
	for _, scns := range [][]uint64{{11}, {5}, {13, 12}, {13, 13}, {12, 14, 14}, {12, 15, 14}, {12, 13, 11}} {
		err := s.Apply(ctx, badBatch(11, scns))
		if err == nil || errors.Is(err, store.ErrConflict) {
			t.Fatalf("Apply(after 11, windows %v) = %v, want an error that is not ErrConflict", scns, err)
		}
		rejected(t, s, m, 0, nil)
	}
	b = &store.Batch{After: 11, Windows: []store.Window{newWin(12).upsert(1, ikey(2), "b").window(), newWin(20).window()}}
	apply(t, s, b)
	m.apply(b)
	checkState(t, s, m)
}

// badBatch is a batch with windows at scns that changes rows, schemas and
// seeds, so that a partial application would show.
func badBatch(after uint64, scns []uint64) *store.Batch {
	b := &store.Batch{After: after, Schemas: testSchemaSet(), Seeds: []store.SeedProgress{seed("db.bad", "r", 1, false)}}
	for i, scn := range scns {
		b.Windows = append(b.Windows, newWin(scn).upsert(1, ikey(int64(100+i)), "bad").del(1, ikey(1)).truncate(3).window())
	}
	return b
}

func testLargeSCN(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	b := &store.Batch{After: 100, Windows: []store.Window{newWin(101).upsert(1, ikey(1), "a").window()}}
	apply(t, s, b)
	m.apply(b)
	big := uint64(math.MaxInt64)
	// A batch whose first window fits and whose second does not: an
	// implementation may refuse it, but only whole.
	b = &store.Batch{After: 101, Windows: []store.Window{
		newWin(big).at(tsOf(102)).upsert(1, ikey(2), "b").window(),
		newWin(big+10).at(tsOf(103)).upsert(1, ikey(3), "c").window(),
	}}
	if err := s.Apply(ctx, b); err != nil {
		t.Logf("Apply with an SCN above MaxInt64 refused: %v", err)
		rejected(t, s, m, 0, nil)
		b.Windows = b.Windows[:1]
		apply(t, s, b)
	}
	m.apply(b)
	checkState(t, s, m)
	checkSnapshot(t, s, m, everything, nil, 1, 1<<20)
	checkSnapshot(t, s, m, big-1, nil, 1, 1<<20)
	checkSnapshot(t, s, m, big, nil, 1, 1<<20)
	checkLog(t, s, m, 100, everything, nil, 1)
	checkLog(t, s, m, 101, big, nil, 1)
}
