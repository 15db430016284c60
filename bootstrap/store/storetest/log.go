package storetest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
)

// logStore applies windows 11, 12, 14, 17, 18..25 (SCNs with gaps) of
// varied sizes and content after 10.
func logStore(t *testing.T, s store.Store) *model {
	m := newModel()
	scns := []uint64{11, 12, 14, 17, 18, 19, 20, 21, 22, 23, 24, 25}
	after := uint64(10)
	for i := 0; i < len(scns); i += 4 {
		b := &store.Batch{After: after}
		for _, scn := range scns[i:min(i+4, len(scns))] {
			w := newWin(scn)
			for k := 0; k < int(scn%5); k++ {
				w.upsert(uint32(1+k%3), ikey(int64(scn)*10+int64(k)), strings.Repeat("x", int(scn)*k))
			}
			if scn%4 == 0 {
				w.del(2, ikey(int64(scn))).truncate(3).upsert(3, skey(fmt.Sprint(scn)), "after truncate")
			}
			b.Windows = append(b.Windows, w.window())
			after = scn
		}
		apply(t, s, b)
		m.apply(b)
	}
	return m
}

func testLog(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := logStore(t, s)
	for _, r := range []struct{ after, upTo uint64 }{
		{10, everything}, {10, 25}, {10, 11}, {10, 10}, {11, 12}, {12, 14}, {13, 16}, {13, 17}, {15, 15},
		{20, 19}, {25, everything}, {26, everything}, {1000, 2000}, {17, 24}, {10, 1 << 62},
	} {
		checkLog(t, s, m, r.after, r.upTo, nil, 1<<20)
	}
}

func testLogPaging(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := logStore(t, s)
	for _, maxBytes := range []int{1, 100, 300, 1000, 5000, 1 << 20} {
		checkLog(t, s, m, 10, everything, nil, maxBytes)
		checkLog(t, s, m, 14, 22, nil, maxBytes)
	}
	// MaxBytes smaller than any window: one window per page, and never
	// an empty page while windows remain.
	got := readLog(t, s, 10, everything, nil, 1)
	if len(got) != len(m.windows) {
		t.Fatalf("Log with MaxBytes 1 returned %d windows, want %d", len(got), len(m.windows))
	}
	p, err := s.Log(ctx, store.LogQuery{After: 10, UpTo: everything, MaxBytes: 1})
	if err != nil || p.Windows != 1 || p.Last != 11 {
		t.Fatalf("Log(after 10, MaxBytes 1) = %d windows, Last %d, %v; want the one window 11", p.Windows, p.Last, err)
	}
}

func testLogFilter(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := logStore(t, s)
	fs := append(filterSet(t), &filter.Filter{Sources: sources(3), Partition: mustPartition(t, "range:0-1")})
	for _, f := range fs {
		checkLog(t, s, m, 10, everything, f, 1<<20)
		checkLog(t, s, m, 12, 20, f, 200)
	}
}

func testLogNotHeld(t *testing.T, h Harness) {
	s, _ := handles{h}.open(t)
	m := logStore(t, s)
	wantNotHeld := func(after, lw uint64) {
		t.Helper()
		_, err := s.Log(ctx, store.LogQuery{After: after, UpTo: everything, MaxBytes: 1 << 20})
		nh, ok := notHeld(err)
		if !ok || nh.After != after || nh.LowWatermark != lw {
			t.Fatalf("Log(after %d) with low watermark %d = %v, want *NotHeldError{After: %d, LowWatermark: %d}", after, lw, err, after, lw)
		}
	}
	wantNotHeld(9, 10)
	wantNotHeld(0, 10)
	checkLog(t, s, m, 10, everything, nil, 1<<20)

	checkPurge(t, s, m, store.PurgePolicy{LogBefore: time.Unix(0, tsOf(17)+1)})
	if m.lw != 17 {
		t.Fatalf("model low watermark %d, want 17", m.lw)
	}
	checkState(t, s, m)
	wantNotHeld(10, 17)
	wantNotHeld(16, 17)
	// The windows below the low watermark are gone even for a range that
	// ends below it.
	_, err := s.Log(ctx, store.LogQuery{After: 12, UpTo: 14, MaxBytes: 1 << 20})
	if _, ok := notHeld(err); !ok {
		t.Fatalf("Log(after 12, upTo 14) with low watermark 17 = %v, want *NotHeldError", err)
	}
	checkLog(t, s, m, 17, everything, nil, 1<<20)
	checkLog(t, s, m, 20, everything, nil, 1<<20)
}

// testLogDuringPurge reads the log from the low watermark while another
// goroutine purges it: every read either fails with *NotHeldError or
// returns every window after its After, never a log with a gap (a check of
// the low watermark and a read of the windows that a purge can come
// between).
func testLogDuringPurge(t *testing.T, h Harness) {
	s, reopen := handles{h}.open(t)
	purger := reopen(t)
	const n = 200
	for i := uint64(0); i < n; i += 100 {
		b := &store.Batch{After: i}
		for scn := i + 1; scn <= i+100; scn++ {
			b.Windows = append(b.Windows, newWin(scn).upsert(1, ikey(int64(scn%7)), "x").window())
		}
		apply(t, s, b)
	}
	done := make(chan error, 1)
	go func() {
		for cut := uint64(2); ; cut = min(cut+9, n-2) {
			if _, err := purger.Purge(ctx, store.PurgePolicy{LogBefore: at(cut)}); err != nil {
				done <- err
				return
			}
			if cut == n-2 {
				break
			}
		}
		done <- nil
	}()
	for reads := 0; ; reads++ {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("Purge: %v", err)
			}
			if st := state(t, s); st.LowWatermark != n-3 || st.Windows != 3 {
				t.Fatalf("State after the purges = %+v, want low watermark %d and 3 windows", st, n-3)
			}
			t.Logf("%d reads during the purges", reads)
			return
		default:
		}
		after := state(t, s).LowWatermark
		p, err := s.Log(ctx, store.LogQuery{After: after, UpTo: everything, MaxBytes: 64 << 20})
		if err != nil {
			if nh, ok := notHeld(err); ok && nh.LowWatermark > after {
				continue
			}
			t.Fatalf("Log(after %d) = %v, want windows or *NotHeldError with a higher low watermark", after, err)
		}
		if p.Windows != int(n-after) || p.Last != n {
			t.Fatalf("Log(after %d) while purging = %d windows up to %d, want all %d windows up to %d", after, p.Windows, p.Last, n-after, n)
		}
		ws := splitWindows(t, p.Frames)
		if h, _ := event.PeekHeader(ws[0]); h.SCN != after+1 {
			t.Fatalf("Log(after %d) while purging starts at window %d: a gap", after, h.SCN)
		}
	}
}
