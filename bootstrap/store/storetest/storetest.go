// Package storetest is the conformance suite of the bootstrap store: the
// executable form of the contract written in package store. Every
// implementation runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, storetest.Harness{Open: func(t *testing.T) (store.Store, func(*testing.T) store.Store) {
//			path := filepath.Join(t.TempDir(), "store.db")
//			open := func(t *testing.T) store.Store {
//				s, err := sqlitestore.Open(path, sqlitestore.Options{})
//				if err != nil {
//					t.Fatal(err)
//				}
//				return s
//			}
//			return open(t), open
//		}})
//	}
//
// # What the suite assumes beyond store.go
//
// The suite reads the contract literally. Where store.go leaves a choice, the
// suite fixes the choice that both implementations can make and that
// callers may rely on:
//
//   - Snapshot orders rows by source id, then by the encoded key compared as
//     bytes (bytes.Compare): the order of SQLite BLOBs and PostgreSQL bytea.
//   - SnapshotPage.Next is nil exactly when no matching row follows the
//     page at the time of the read: a page that ends on the last row has a
//     nil Next (no empty trailing page), and a page with a nil Next is the
//     end.
//   - AsOf and UpTo of math.MaxUint64 mean "everything"; an implementation
//     that stores SCNs as signed 64-bit integers clamps them.
//   - An empty store (before the first Apply) has Head 0, LowWatermark 0,
//     Windows 0 and Empty true; a batch without windows on an empty store
//     makes its After the head and the low watermark.
//   - Purge deletes the oldest log windows in SCN order while their
//     timestamp is before LogBefore (stopping at the first window that is
//     not, so that no gap ever opens below the head), and never the head
//     window. A tombstone is purged by the timestamp of the window that made
//     it, also when that window has left the log.
//   - Seed times are compared at microsecond precision (PostgreSQL's).
//   - Schemas are compared as JSON values, so an implementation may
//     re-encode the Avro JSON (jsonb).
//   - A rejected batch (ErrConflict, or SCNs out of order) changes nothing,
//     including its schemas and seeds; only a stale After is ErrConflict.
//   - An SCN above math.MaxInt64 may be refused, but only as a whole batch.
//   - Log checks the low watermark and reads the windows on one state of
//     the store: a Purge between the two must never yield a page with a gap.
//   - Close may be called on a handle while another handle of the same store
//     stays in use.
package storetest

import (
	"sync"
	"testing"

	"github.com/databus-go/databus/bootstrap/store"
)

// Harness tells Run how to get stores of the implementation under test.
type Harness struct {
	// Open returns a handle on a new, empty store, distinct from every
	// store Open returned before (its own file, database or schema), and
	// reopen, which opens another handle on that same store.
	//
	// Run calls reopen both after closing the previous handle (to check
	// persistence) and while other handles are still open (as several
	// bootstrap servers share one store, or a restarted producer meets the
	// old one): implementations must support both. Run closes every handle
	// it gets exactly once, before the (sub)test ends; the harness must not
	// close them itself, but may register a t.Cleanup that removes the
	// store's files or schema (it runs after Run's closes). Open and reopen
	// report their own failures with t.Fatal.
	Open func(t *testing.T) (s store.Store, reopen func(t *testing.T) store.Store)
}

// Run runs the conformance suite as subtests of t, each on fresh stores
// from h. It takes a few seconds on SQLite.
func Run(t *testing.T, h Harness) {
	if h.Open == nil {
		t.Fatal("storetest: Harness.Open is nil")
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, h) })
	}
}

// tests is the suite, in the order it runs: the basic guarantees first, so
// that a failure there explains the later ones.
var tests = []struct {
	name string
	fn   func(*testing.T, Harness)
}{
	{"Identity", testIdentity},
	{"EmptyStore", testEmptyStore},
	{"FirstBatch", testFirstBatch},
	{"BatchWithoutWindows", testBatchWithoutWindows},
	{"Conflict", testConflict},
	{"SCNOrder", testSCNOrder},
	{"LargeSCN", testLargeSCN},
	{"Folding", testFolding},
	{"FoldingTruncate", testFoldingTruncate},
	{"SnapshotAsOf", testSnapshotAsOf},
	{"SnapshotPaging", testSnapshotPaging},
	{"SnapshotCursor", testSnapshotCursor},
	{"SnapshotDst", testSnapshotDst},
	{"Filters", testFilters},
	{"Log", testLog},
	{"LogPaging", testLogPaging},
	{"LogFilter", testLogFilter},
	{"LogNotHeld", testLogNotHeld},
	{"LogDuringPurge", testLogDuringPurge},
	{"Purge", testPurge},
	{"PurgeTombstones", testPurgeTombstones},
	{"PurgeNonMonotonic", testPurgeNonMonotonic},
	{"Schemas", testSchemas},
	{"Seeds", testSeeds},
	{"Reopen", testReopen},
	{"TwoHandles", testTwoHandles},
	{"ConcurrentReader", testConcurrentReader},
	{"Random", testRandom},
}

// handles opens stores through a Harness and closes each handle exactly
// once, whether the test closes it early or leaves it to the cleanup.
type handles struct {
	h Harness
}

type handle struct {
	store.Store
	once sync.Once
	err  error
}

func (c *handle) close() error {
	c.once.Do(func() { c.err = c.Store.Close() })
	return c.err
}

// open returns a new empty store and its reopen function; every handle it
// or reopen returns is closed when t ends.
func (hs handles) open(t *testing.T) (*handle, func(t *testing.T) *handle) {
	t.Helper()
	s, reopen := hs.h.Open(t)
	if s == nil || reopen == nil {
		t.Fatal("storetest: Harness.Open returned a nil store or reopen")
	}
	c := track(t, s)
	return c, func(t *testing.T) *handle {
		t.Helper()
		s := reopen(t)
		if s == nil {
			t.Fatal("storetest: reopen returned a nil store")
		}
		return track(t, s)
	}
}

func track(t *testing.T, s store.Store) *handle {
	c := &handle{Store: s}
	t.Cleanup(func() {
		if err := c.close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// Close closes the handle now (the cleanup then does nothing).
func (c *handle) Close() error { return c.close() }
