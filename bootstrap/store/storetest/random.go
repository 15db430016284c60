package storetest

import (
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/filter"
)

// randomSeed returns STORETEST_SEED when set (to replay a failure), else a
// seed from the clock; the test logs it.
func randomSeed(t *testing.T) uint64 {
	if s := os.Getenv("STORETEST_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("STORETEST_SEED=%q: %v", s, err)
		}
		return v
	}
	return uint64(time.Now().UnixNano())
}

// testRandom applies random batches of upserts, deletes and truncates over
// a few sources and keys, with purges and a reopen, and compares the store
// with the model at random AsOf values, filters and page bounds.
func testRandom(t *testing.T, h Harness) {
	seed := randomSeed(t)
	t.Logf("seed %d (replay with STORETEST_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	s, reopen := handles{h}.open(t)
	m := newModel()

	keys := [][]byte{ikey(0), ikey(1), ikey(2), ikey(-3), ikey(7), ikey(100), ikey(-1 << 62), ukey(5), ukey(1 << 63), skey("a"), skey("b"), skey(""), skey("long key")}
	filters := filterSet(t)
	for _, p := range []string{"mod:0/3", "mod:1,2/3", "range:-5-3", "range:0-1,7-200"} {
		filters = append(filters, &filter.Filter{Partition: mustPartition(t, p)}, &filter.Filter{Sources: sources(2), Partition: mustPartition(t, p)})
	}
	pick := func() *filter.Filter { return filters[rng.IntN(len(filters))] }

	scn := uint64(rng.IntN(1000))
	const steps = 60
	reopenAt := 1 + rng.IntN(steps-1)
	for step := 0; step < steps; step++ {
		b := &store.Batch{After: scn}
		for range rng.IntN(5) {
			scn += 1 + uint64(rng.IntN(3))
			w := newWin(scn)
			for range rng.IntN(9) {
				src := uint32(1 + rng.IntN(3))
				k := keys[rng.IntN(len(keys))]
				switch r := rng.IntN(100); {
				case r < 60:
					w.upsert(src, k, strings.Repeat("v", rng.IntN(120))+strconv.FormatUint(scn, 10))
				case r < 95:
					w.del(src, k)
				default:
					w.truncate(src)
				}
			}
			b.Windows = append(b.Windows, w.window())
		}
		apply(t, s, b)
		m.apply(b)
		checkState(t, s, m)

		asOfs := []uint64{everything, m.head, m.lw, uint64(rng.Int64N(int64(m.head) + 2))}
		for range 2 {
			asOf := asOfs[rng.IntN(len(asOfs))]
			checkSnapshot(t, s, m, asOf, pick(), 1+rng.IntN(20), 1+rng.IntN(2000))
		}
		if step%3 == 0 {
			after := m.lw + uint64(rng.Int64N(int64(m.head-m.lw)+2))
			upTo := after + uint64(rng.Int64N(int64(m.head-m.lw)+2))
			checkLog(t, s, m, after, upTo, pick(), 1+rng.IntN(3000))
			if m.lw > 0 {
				_, err := s.Log(ctx, store.LogQuery{After: m.lw - 1, UpTo: everything, MaxBytes: 1 << 20})
				if nh, ok := notHeld(err); !ok || nh.LowWatermark != m.lw {
					t.Fatalf("Log(after %d) below low watermark %d = %v, want *NotHeldError", m.lw-1, m.lw, err)
				}
			}
		}
		if step%7 == 6 {
			// Purge a random part of the log and of the tombstones.
			span := int64(m.head-m.lw) + 1
			checkPurge(t, s, m, store.PurgePolicy{
				LogBefore:        at(m.lw + uint64(rng.Int64N(span))),
				TombstonesBefore: at(uint64(rng.Int64N(int64(m.head) + 1))),
			})
			checkState(t, s, m)
		}
		if step == reopenAt {
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			s = reopen(t)
			checkState(t, s, m)
		}
	}
	checkSnapshot(t, s, m, everything, nil, 1000, 1<<20)
	checkLog(t, s, m, m.lw, everything, nil, 1<<20)
	checkTombstones(t, s, m)
}
