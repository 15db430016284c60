package client

import (
	"testing"
	"time"

	"pgregory.net/rapid"
)

// TestCoreScenario walks one window through every transition.
func TestCoreScenario(t *testing.T) {
	k := newCore(5, 3, 2)
	want := func(got, want step) {
		t.Helper()
		if got != want {
			t.Fatalf("step = %+v, want %+v", got, want)
		}
	}
	want(k.offer(10, false), step{kind: stepCommit}) // nothing to deliver: commits, no save yet (1 of 2)
	want(k.offer(20, true), step{kind: stepDeliver, attempt: 1})
	want(k.result(errBoom), step{kind: stepRollback, attempt: 1})
	if k.committed != 10 {
		t.Fatalf("committed = %d during a failing window", k.committed)
	}
	want(k.retry(), step{kind: stepDeliver, attempt: 2})
	want(k.result(nil), step{kind: stepCommit, save: true})
	k.saved(20)
	if k.pending() {
		t.Fatal("pending after a save of the committed checkpoint")
	}
	want(k.offer(30, true), step{kind: stepDeliver, attempt: 1})
	want(k.result(errBoom), step{kind: stepRollback, attempt: 1})
	want(k.retry(), step{kind: stepDeliver, attempt: 2})
	want(k.result(errBoom), step{kind: stepRollback, attempt: 2})
	want(k.retry(), step{kind: stepDeliver, attempt: 3})
	want(k.result(errBoom), step{kind: stepRollback, attempt: 3, final: true})
	if k.committed != 20 || k.pending() {
		t.Fatalf("after giving up: committed %d, pending %v", k.committed, k.pending())
	}
}

type boomError struct{}

func (boomError) Error() string { return "boom" }

var errBoom error = boomError{}

// TestCoreProperties drives the core with random windows, failure patterns
// and save failures, and checks the dispatcher's guarantees: deliveries are
// the source sequence with only whole-window repeats, commits are every
// window in order with none skipped, the checkpoint never reaches a window
// that has not succeeded, saves are monotone window boundaries, and giving
// up leaves the checkpoint before the failed window.
func TestCoreProperties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		maxAttempts := rapid.IntRange(1, 4).Draw(t, "maxAttempts")
		every := rapid.IntRange(1, 3).Draw(t, "every")
		start := rapid.Uint64Range(0, 100).Draw(t, "start")
		n := rapid.IntRange(0, 30).Draw(t, "windows")
		scns := make([]uint64, n)
		call := make([]bool, n)
		prev := start
		for i := range scns {
			prev += rapid.Uint64Range(1, 1<<20).Draw(t, "gap")
			scns[i] = prev
			call[i] = rapid.Bool().Draw(t, "call")
		}
		failP := rapid.IntRange(0, 100).Draw(t, "failPercent")

		k := newCore(start, maxAttempts, every)
		var (
			deliveries []uint64 // window of each delivery attempt
			commits    []uint64
			saves      []uint64
			lastSaved  = start
			gaveUp     = -1
		)
	windows:
		for i, scn := range scns {
			st := k.offer(scn, call[i])
			attempts := 0
			var lastErr error
			for st.kind != stepCommit {
				switch st.kind {
				case stepDeliver:
					attempts++
					if st.attempt != attempts {
						t.Fatalf("window %d: attempt %d reported as %d", scn, attempts, st.attempt)
					}
					deliveries = append(deliveries, scn)
					if k.committed >= scn {
						t.Fatalf("checkpoint %d reached window %d before it succeeded", k.committed, scn)
					}
					lastErr = nil
					if rapid.IntRange(0, 99).Draw(t, "roll") < failP {
						lastErr = errBoom
					}
					st = k.result(lastErr)
				case stepRollback:
					if want := i == 0 && k.committed == start || i > 0 && k.committed == scns[i-1]; !want {
						t.Fatalf("rollback of window %d to %d, want the previous window", scn, k.committed)
					}
					if st.final {
						if attempts != maxAttempts {
							t.Fatalf("gave up after %d attempts, limit %d", attempts, maxAttempts)
						}
						gaveUp = i
						break windows
					}
					st = k.retry()
				}
			}
			if k.committed != scn {
				t.Fatalf("commit of window %d left checkpoint at %d", scn, k.committed)
			}
			if lastErr != nil {
				t.Fatalf("window %d committed after a failed delivery", scn)
			}
			commits = append(commits, scn)
			if !call[i] && attempts != 0 {
				t.Fatalf("window %d with nothing to deliver was delivered", scn)
			}
			if st.save {
				if rapid.Bool().Draw(t, "saveFails") {
					continue
				}
				saves = append(saves, k.committed)
				if k.committed < lastSaved {
					t.Fatalf("save %d after save %d", k.committed, lastSaved)
				}
				lastSaved = k.committed
				k.saved(k.committed)
			}
			if k.pending() != (lastSaved != k.committed) {
				t.Fatalf("pending %v with saved %d committed %d", k.pending(), lastSaved, k.committed)
			}
		}

		// Commits: every window, in order, up to where the core gave up.
		end := n
		if gaveUp >= 0 {
			end = gaveUp
			wantCP := start
			if gaveUp > 0 {
				wantCP = scns[gaveUp-1]
			}
			if k.committed != wantCP {
				t.Fatalf("gave up on window %d with checkpoint %d, want %d", scns[gaveUp], k.committed, wantCP)
			}
		}
		if len(commits) != end {
			t.Fatalf("%d commits, want %d", len(commits), end)
		}
		for i := range commits {
			if commits[i] != scns[i] {
				t.Fatalf("commit %d is window %d, want %d", i, commits[i], scns[i])
			}
		}
		// Deliveries: the deliverable windows in source order, each
		// repeated at most maxAttempts times, consecutively.
		var dedup []uint64
		runs := map[uint64]int{}
		for _, d := range deliveries {
			if len(dedup) == 0 || dedup[len(dedup)-1] != d {
				dedup = append(dedup, d)
			}
			runs[d]++
		}
		var want []uint64
		for i := 0; i < n && (gaveUp < 0 || i <= gaveUp); i++ {
			if call[i] {
				want = append(want, scns[i])
			}
		}
		if len(dedup) != len(want) {
			t.Fatalf("delivered windows %v, want %v", dedup, want)
		}
		for i := range want {
			if dedup[i] != want[i] || runs[want[i]] > maxAttempts {
				t.Fatalf("delivered windows %v (runs %v), want %v", dedup, runs, want)
			}
		}
		// Saves land on committed window boundaries, every `every` commits
		// unless a save failed.
		for _, s := range saves {
			found := s == start
			for _, c := range commits {
				found = found || c == s
			}
			if !found {
				t.Fatalf("saved %d, not a committed window", s)
			}
		}
	})
}

func TestBackoff(t *testing.T) {
	min, max := 10*time.Millisecond, 80*time.Millisecond
	for attempt, want := range []time.Duration{1: 10, 2: 20, 3: 40, 4: 80, 5: 80, 50: 80} {
		if want == 0 {
			continue
		}
		want *= time.Millisecond
		lo, hi := backoff(attempt, min, max, 0), backoff(attempt, min, max, 0.999999)
		if lo != want/2 || hi > want || hi < want*99/100 {
			t.Errorf("backoff(%d) in [%v, %v], want [%v, %v]", attempt, lo, hi, want/2, want)
		}
	}
	if d := backoff(200, time.Second, 1<<62, 0.5); d < 1<<61 || d > 1<<62 {
		t.Errorf("backoff near the Duration limit = %v", d)
	}
	if d := backoff(3, 0, 0, 0.5); d != 0 {
		t.Errorf("zero backoff = %v", d)
	}
}
