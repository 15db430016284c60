package storetest

import (
	"testing"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
)

func at(scn uint64) time.Time { return time.Unix(0, tsOf(scn)) }

func testPurge(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := logStore(t, s) // windows 11, 12, 14, 17, 18..25
	checkPurge(t, s, m, store.PurgePolicy{})
	checkState(t, s, m)

	// A window committed exactly at LogBefore is not before it.
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: at(12)})
	if m.lw != 11 {
		t.Fatalf("model: low watermark %d, want 11", m.lw)
	}
	checkState(t, s, m)
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: at(16)})
	checkState(t, s, m)
	checkLog(t, s, m, m.lw, everything, nil, 1<<20)
	// The log's purge leaves the snapshot alone.
	checkSnapshot(t, s, m, everything, nil, 1000, 1<<20)
	checkSnapshot(t, s, m, 12, nil, 1000, 1<<20)

	// Everything is old: all but the head window go.
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: farFuture})
	st := checkState(t, s, m)
	if st.Windows != 1 || st.LowWatermark != 24 || st.Head != 25 {
		t.Fatalf("State after purging everything = %+v, want only the head window 25 left and low watermark 24", st)
	}
	checkLog(t, s, m, 24, everything, nil, 1<<20)
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: farFuture})
	checkSnapshot(t, s, m, everything, nil, 1000, 1<<20)

	// The store goes on after the head.
	b := &store.Batch{After: 25, Windows: []store.Window{newWin(26).upsert(1, ikey(1), "x").window(), newWin(27).window()}}
	apply(t, s, b)
	m.apply(b)
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: at(27)})
	st = checkState(t, s, m)
	if st.LowWatermark != 26 || st.Windows != 1 {
		t.Fatalf("State = %+v, want low watermark 26 and one window", st)
	}
	checkLog(t, s, m, 26, everything, nil, 1<<20)
}

func testPurgeTombstones(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	batches := []*store.Batch{
		{After: 10, Windows: []store.Window{
			newWin(11).upsert(1, ikey(1), "a").upsert(1, ikey(2), "b").upsert(1, ikey(3), "c").
				upsert(2, ikey(1), "d").upsert(2, ikey(2), "e").upsert(2, ikey(3), "f").upsert(2, ikey(4), "g").window(),
		}},
		{After: 11, Windows: []store.Window{
			newWin(12).del(1, ikey(1)).window(),
			newWin(13).del(1, ikey(2)).del(2, ikey(4)).window(),
			newWin(14).truncate(2).window(), // three live rows: three tombstones; 2/4 keeps its SCN 13
			newWin(15).del(1, ikey(3)).upsert(1, ikey(3), "back").window(),
			newWin(16).del(1, ikey(99)).window(), // never held
			newWin(17).del(1, ikey(1)).window(),  // a tombstone deleted again moves to 17
			newWin(18).upsert(2, ikey(1), "after truncate").window(),
		}},
	}
	for _, b := range batches {
		apply(t, s, b)
		m.apply(b)
	}
	checkPurge(t, s, m, store.PurgePolicy{TombstonesBefore: at(11)})
	checkPurge(t, s, m, store.PurgePolicy{TombstonesBefore: at(13).Add(1)})
	checkSnapshot(t, s, m, everything, nil, 1000, 1<<20)
	// The windows of the truncate's tombstones leave the log first: the
	// tombstones still go by their window's time.
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: at(17)})
	checkState(t, s, m)
	checkPurge(t, s, m, store.PurgePolicy{TombstonesBefore: at(15)})
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: farFuture, TombstonesBefore: farFuture})
	if m.tombstones() != 0 {
		t.Fatalf("model still holds %d tombstones", m.tombstones())
	}
	checkState(t, s, m)
	checkSnapshot(t, s, m, everything, nil, 1000, 1<<20)
	checkSnapshot(t, s, m, 17, nil, 1000, 1<<20)
}

func testPurgeNonMonotonic(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := newModel()
	// Commit times are not monotonic in SCN order (clock steps, several
	// primaries): Purge must never open a gap in the log.
	sec := int64(time.Second)
	b := &store.Batch{After: 10, Windows: []store.Window{
		newWin(11).at(baseTime+100*sec).upsert(1, ikey(1), "a").window(),
		newWin(12).at(baseTime+300*sec).del(1, ikey(1)).window(),
		newWin(13).at(baseTime+200*sec).upsert(1, ikey(2), "b").window(),
		newWin(14).at(baseTime+50*sec).del(1, ikey(2)).window(),
		newWin(15).at(baseTime+10*sec).upsert(1, ikey(3), "c").window(),
	}}
	apply(t, s, b)
	m.apply(b)
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: time.Unix(0, baseTime+250*sec)})
	st := checkState(t, s, m)
	if st.LowWatermark != 11 {
		t.Fatalf("low watermark %d after purging windows before the second one's time, want 11", st.LowWatermark)
	}
	checkLog(t, s, m, 11, everything, nil, 1<<20)
	// Tombstones go by the time of their own window: 14's (50s) but not
	// 12's (300s).
	checkPurge(t, s, m, store.PurgePolicy{TombstonesBefore: time.Unix(0, baseTime+250*sec)})
	checkPurge(t, s, m, store.PurgePolicy{LogBefore: time.Unix(0, baseTime+1000*sec)})
	st = checkState(t, s, m)
	if st.LowWatermark != 14 || st.Windows != 1 {
		t.Fatalf("State = %+v, want every window but the head purged (low watermark 14)", st)
	}
	checkLog(t, s, m, 14, everything, nil, 1<<20)
	checkTombstones(t, s, m)
}
