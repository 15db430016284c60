package buffer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"pgregory.net/rapid"
)

// model is the reference: a plain list of windows, evicting from the front.
type model struct {
	max, maxSpill int64
	maxSpilled    int
	windows       []Window
	lowWM         uint64
	last          uint64
	evicted       []*Spill // spills of evicted windows: their files must be gone
}

func (m *model) bytes() (n int64) {
	for i := range m.windows {
		n += m.windows[i].size()
	}
	return n
}

func (m *model) spilled() (n int) {
	for i := range m.windows {
		if m.windows[i].Spill != nil {
			n++
		}
	}
	return n
}

func (m *model) spillBytes() (n int64) {
	for i := range m.windows {
		if s := m.windows[i].Spill; s != nil {
			n += s.size
		}
	}
	return n
}

func (m *model) append(w Window) (int, error) {
	var spill int64
	spilled := 0
	if w.Spill != nil {
		spill, spilled = w.Spill.size, 1
	}
	if w.size() > m.max || spill > m.maxSpill || spilled > m.maxSpilled {
		return 0, &WindowTooLargeError{}
	}
	if w.SCN <= m.last {
		return 0, ErrOutOfOrder
	}
	ev := 0
	for m.bytes()+w.size() > m.max || m.spillBytes()+spill > m.maxSpill || m.spilled()+spilled > m.maxSpilled {
		if s := m.windows[0].Spill; s != nil {
			m.evicted = append(m.evicted, s)
		}
		m.lowWM = m.windows[0].SCN
		m.windows = m.windows[1:]
		ev++
	}
	m.windows = append(m.windows, w)
	m.last = w.SCN
	return ev, nil
}

func (m *model) read(after uint64, max int) ([]Window, error) {
	if after < m.lowWM {
		return nil, &SCNNotHeldError{}
	}
	var out []Window
	total := 0
	for _, w := range m.windows {
		if w.SCN <= after {
			continue
		}
		if total > 0 && total+int(w.Len()) > max {
			break
		}
		total += int(w.Len())
		out = append(out, w)
	}
	return out, nil
}

func window(scn uint64, size int) Window {
	return Window{SCN: scn, Timestamp: int64(scn) * 1000, Events: size % 7, Data: make([]byte, size), Position: []byte(fmt.Sprint(scn))}
}

// spillContent is what the spill file of window scn holds.
func spillContent(scn uint64, size int) []byte {
	return bytes.Repeat([]byte{byte(scn)}, size)
}

// spilledWindow returns window scn with size bytes spilled to a file in dir.
func spilledWindow(t interface{ Fatal(...any) }, dir string, scn uint64, size int) Window {
	path := filepath.Join(dir, fmt.Sprintf("%d-%d.win", scn, time.Now().UnixNano()))
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(spillContent(scn, size)); err != nil {
		t.Fatal(err)
	}
	return Window{SCN: scn, Timestamp: int64(scn) * 1000, Events: size % 5, Spill: NewSpill(f, path, int64(size)), Position: []byte(fmt.Sprint(scn))}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// checkSpill reads a spilled window through a reader's reference.
func checkSpill(t *rapid.T, w Window) {
	got, err := io.ReadAll(w.Spill.Reader())
	if err != nil || !bytes.Equal(got, spillContent(w.SCN, int(w.Spill.size))) {
		t.Fatalf("spilled window %d read back wrong (%d bytes, %v)", w.SCN, len(got), err)
	}
}

func TestAgainstModel(t *testing.T) {
	dir := t.TempDir()
	rapid.Check(t, func(t *rapid.T) {
		max := rapid.Int64Range(Overhead+SpillOverhead+8, 4096).Draw(t, "max")
		maxSpill := rapid.Int64Range(0, 8192).Draw(t, "maxSpill")
		maxSpilled := rapid.IntRange(0, 4).Draw(t, "maxSpilled")
		b, m := New(max), &model{max: max, maxSpill: maxSpill, maxSpilled: maxSpilled}
		b.SetSpillBounds(maxSpill, maxSpilled)
		if rapid.Bool().Draw(t, "restarted") {
			start := rapid.Uint64Range(1, 50).Draw(t, "start")
			b.SetStart(start, []byte("p"))
			m.lowWM, m.last = start, start
		}
		var reads [][]Window // Read results not released yet
		for i := rapid.IntRange(1, 200).Draw(t, "ops"); i > 0; i-- {
			switch op := rapid.IntRange(0, 5).Draw(t, "op"); {
			case op < 3:
				scn := m.last + rapid.Uint64Range(0, 3).Draw(t, "gap")
				if rapid.IntRange(0, 20).Draw(t, "stale") == 0 {
					scn = rapid.Uint64Range(0, m.last+1).Draw(t, "any")
				}
				var w Window
				if op == 2 {
					w = spilledWindow(t, dir, scn, rapid.IntRange(1, 4096).Draw(t, "spillSize"))
				} else {
					w = window(scn, rapid.IntRange(0, int(max)).Draw(t, "size"))
				}
				ge, gerr := b.Append(w)
				we, werr := m.append(w)
				if ge != we || (gerr == nil) != (werr == nil) {
					t.Fatalf("Append(%d, %d bytes, spilled %v) = %d, %v; model %d, %v", w.SCN, w.Len(), w.Spill != nil, ge, gerr, we, werr)
				}
				var tooLarge *WindowTooLargeError
				if werr != nil && errors.As(werr, &tooLarge) && !errors.As(gerr, &tooLarge) {
					t.Fatalf("want WindowTooLargeError, got %v", gerr)
				}
				if gerr != nil && w.Spill != nil {
					w.Spill.Discard() // refused: still the caller's
					if exists(w.Spill.path) || w.Spill.refs.Load() != 0 {
						t.Fatalf("Discard left the file of window %d", w.SCN)
					}
				}
			case op == 3 && len(reads) > 0: // a reader finishes: its spilled windows are still readable
				k := rapid.IntRange(0, len(reads)-1).Draw(t, "release")
				for _, w := range reads[k] {
					if w.Spill != nil {
						checkSpill(t, w)
					}
				}
				Release(reads[k])
				reads = append(reads[:k], reads[k+1:]...)
			default:
				after := rapid.Uint64Range(0, m.last+2).Draw(t, "after")
				max := rapid.IntRange(1, 4096).Draw(t, "maxBytes")
				got, gerr := b.Read(after, max, nil)
				want, werr := m.read(after, max)
				if (gerr == nil) != (werr == nil) {
					t.Fatalf("Read(%d) err = %v, model %v", after, gerr, werr)
				}
				var nh *SCNNotHeldError
				if gerr != nil {
					if !errors.As(gerr, &nh) || nh.LowWatermark != m.lowWM || (len(m.windows) > 0 && nh.OldestSCN != m.windows[0].SCN) {
						t.Fatalf("Read(%d) = %#v, model lowWM %d", after, gerr, m.lowWM)
					}
					continue
				}
				if len(got) != len(want) {
					t.Fatalf("Read(%d, %d) returned %d windows, model %d", after, max, len(got), len(want))
				}
				for i := range got {
					if got[i].SCN != want[i].SCN || got[i].Spill != want[i].Spill {
						t.Fatalf("window %d: scn %d, model %d", i, got[i].SCN, want[i].SCN)
					}
				}
				reads = append(reads, got)
			}
			// Held windows' files exist; evicted ones' are gone, and closed
			// unless a reader still holds them.
			for _, w := range m.windows {
				if w.Spill != nil && !exists(w.Spill.path) {
					t.Fatalf("the file of held window %d is gone", w.SCN)
				}
			}
			for _, s := range m.evicted {
				if exists(s.path) {
					t.Fatalf("evicted spill %s still exists", s.path)
				}
			}
		}
		in := b.Info()
		if in.Bytes != m.bytes() || in.Windows != len(m.windows) || in.LowWatermark != m.lowWM || in.Bytes > max ||
			in.SpillBytes != m.spillBytes() || in.SpillBytes > maxSpill || in.SpilledWindows != m.spilled() || in.SpilledWindows > maxSpilled {
			t.Fatalf("Info = %+v; model bytes %d spill %d windows %d lowWM %d", in, m.bytes(), m.spillBytes(), len(m.windows), m.lowWM)
		}
		if len(m.windows) > 0 && string(in.LowPosition) != fmt.Sprint(m.lowWM) && in.LowWatermark != 0 && in.LowPosition != nil && string(in.LowPosition) != "p" {
			t.Fatalf("low position %q for low watermark %d", in.LowPosition, in.LowWatermark)
		}
		for _, r := range reads {
			Release(r)
		}
		// Every reference released: evicted files are closed, held ones open
		// with the buffer's reference only.
		for _, s := range m.evicted {
			if n := s.refs.Load(); n != 0 {
				t.Fatalf("evicted spill %s has %d references", s.path, n)
			}
			if _, err := s.f.Stat(); !errors.Is(err, os.ErrClosed) {
				t.Fatalf("evicted spill %s is not closed: %v", s.path, err)
			}
		}
		for _, w := range m.windows {
			if w.Spill != nil {
				if n := w.Spill.refs.Load(); n != 1 {
					t.Fatalf("held spill of window %d has %d references", w.SCN, n)
				}
				w.Spill.Discard() // end of this run: do not leak the file
			}
		}
	})
}

func TestWaitWakesOnAppend(t *testing.T) {
	b := New(1 << 20)
	ch := b.Changed()
	if ws, _ := b.Read(0, 100, nil); len(ws) != 0 {
		t.Fatal("empty buffer returned windows")
	}
	go b.Append(window(1, 10))
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("Changed was not closed by Append")
	}
	if ws, _ := b.Read(0, 100, nil); len(ws) != 1 {
		t.Fatal("the appended window is not readable")
	}
	b.Close()
	<-b.Changed()
	if _, err := b.Append(window(2, 10)); err != nil {
		t.Fatalf("Append after Close: %v", err)
	}
}

func TestTimestampAt(t *testing.T) {
	b := New(1 << 20)
	for _, s := range []uint64{10, 20, 30} {
		b.Append(window(s, 1))
	}
	for scn, want := range map[uint64]int64{9: -1, 10: 10000, 25: 20000, 99: 30000} {
		ts, ok := b.TimestampAt(scn)
		if (want < 0) == ok || (ok && ts != want) {
			t.Errorf("TimestampAt(%d) = %d, %v", scn, ts, ok)
		}
	}
}

// TestConcurrentReaders checks with -race that readers see whole, ordered,
// gap-free sequences while the writer evicts underneath them.
func TestConcurrentReaders(t *testing.T) {
	b := New(64 << 10)
	const n = 20000
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var after uint64
			for after < n {
				ch := b.Changed()
				ws, err := b.Read(after, 4096, nil)
				var nh *SCNNotHeldError
				if errors.As(err, &nh) {
					after = nh.LowWatermark // fell behind: skip ahead as a bootstrap would
					continue
				}
				if len(ws) == 0 {
					<-ch
					continue
				}
				for _, w := range ws {
					if w.SCN != after+1 || len(w.Data) != int(w.SCN%100) {
						t.Errorf("read window %d (%d bytes) after %d", w.SCN, len(w.Data), after)
						return
					}
					after = w.SCN
				}
			}
		}()
	}
	for s := uint64(1); s <= n; s++ {
		if _, err := b.Append(window(s, int(s%100))); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

// BenchmarkAppendRead measures the buffer's cost per event: one window of
// ten ~200-byte events appended and then read back.
func BenchmarkAppendRead(b *testing.B) {
	const eventsPerWindow = 10
	buf := New(64 << 20)
	data := make([]byte, 200*eventsPerWindow)
	dst := make([]Window, 0, 1)
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for i := 0; i < b.N; i++ {
		scn := uint64(i + 1)
		if _, err := buf.Append(Window{SCN: scn, Events: eventsPerWindow, Data: data}); err != nil {
			b.Fatal(err)
		}
		dst, _ = buf.Read(scn-1, 1<<20, dst[:0])
		if len(dst) != 1 {
			b.Fatal("window not read back")
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*eventsPerWindow), "ns/event")
}
