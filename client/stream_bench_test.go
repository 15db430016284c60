package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/relay"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// End-to-end benchmark shape, as relay's BenchmarkStream: ~200-byte events,
// 10 per window, 1 MiB responses.
const (
	e2eEventSize       = 200
	e2eEventsPerWindow = 10
	e2eBatch           = 1 << 20
)

// e2eGen generates the benchmark's windows: person inserts of exactly
// e2eEventSize bytes, with a valid Avro payload.
type e2eGen struct{ payload []byte }

func newE2EGen(tb testing.TB) *e2eGen {
	c := codecOf(tb, personV1())
	want := e2eEventSize - event.HeaderSize - len(event.AppendKeyInt(nil, 0)) - event.TrailerSize
	for n := 0; n < want; n++ {
		p, err := c.Encode(map[string]any{"id": int64(1), "name": strings.Repeat("x", n)})
		if err != nil {
			tb.Fatal(err)
		}
		if len(p) == want {
			return &e2eGen{payload: p}
		}
	}
	tb.Fatalf("no person payload of %d bytes", want)
	return nil
}

// window fills w with window scn.
func (g *e2eGen) window(w *source.Window, scn uint64) {
	w.SCN, w.Timestamp, w.Position = scn, int64(scn)*1000, source.Position{SCN: scn}
	if len(w.Events) != e2eEventsPerWindow {
		w.Events = make([]event.Event, e2eEventsPerWindow)
	}
	for i := range w.Events {
		w.Events[i] = event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Timestamp: w.Timestamp, Source: 1, SchemaVersion: 1,
			Key: event.AppendKeyInt(nil, int64(scn)*e2eEventsPerWindow+int64(i)), Payload: g.payload}
	}
}

// encode returns windows 1..n encoded as the relay holds them (data frames,
// then the end-of-window frame), each a slice of one array, in order: a
// window's slice extends over the ones after it (see batches).
func (g *e2eGen) encode(tb testing.TB, n uint64) [][]byte {
	var w source.Window
	var data []byte
	ends := make([]int, 0, n)
	for scn := uint64(1); scn <= n; scn++ {
		g.window(&w, scn)
		var err error
		for i := range w.Events {
			if data, err = event.AppendFrame(data, &w.Events[i]); err != nil {
				tb.Fatal(err)
			}
		}
		eow := event.EndOfWindow(scn, w.Timestamp, uint32(len(w.Events)), w.TxID)
		if data, err = event.AppendFrame(data, &eow); err != nil {
			tb.Fatal(err)
		}
		ends = append(ends, len(data))
	}
	out := make([][]byte, n)
	start := 0
	for i, end := range ends {
		out[i] = data[start:end]
		start = end
	}
	return out
}

// batches groups windows as the relay answers a maxBytes of e2eBatch: whole
// windows, as many as fit, at least one.
func batches(windows [][]byte) [][]byte {
	var out [][]byte
	for i := 0; i < len(windows); {
		first, size := windows[i], 0
		for ; i < len(windows) && (size == 0 || size+len(windows[i]) <= e2eBatch); i++ {
			size += len(windows[i])
		}
		out = append(out, first[:size]) // the windows are contiguous
	}
	return out
}

// e2eSource is a source.Source emitting windows 1..windows, then idling.
type e2eSource struct {
	gen     *e2eGen
	windows uint64
}

func (s *e2eSource) Open(context.Context) ([]schema.Table, error) {
	return []schema.Table{personV1()}, nil
}

func (s *e2eSource) Run(ctx context.Context, from source.Position, emit func(context.Context, *source.Window) error) error {
	var w source.Window
	for scn := from.SCN + 1; scn <= s.windows; scn++ {
		s.gen.window(&w, scn)
		if err := emit(ctx, &w); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return ctx.Err()
}

func (s *e2eSource) Release(context.Context, source.Position) error { return nil }
func (s *e2eSource) Close() error                                   { return nil }

// startE2ERelay runs a real relay over windows generated windows, and waits
// until its buffer holds them all. stop stops it; it is also a cleanup.
func startE2ERelay(b *testing.B, gen *e2eGen, windows uint64) (r *relay.Relay, base string, stop func()) {
	b.Helper()
	// Every window, with room to spare: nothing may be evicted.
	maxBytes := max(512*relay.MiB, relay.ByteSize(windows)*(e2eEventsPerWindow+1)*e2eEventSize*5/4)
	cfg := relay.Config{Listen: "127.0.0.1:0", StateDir: b.TempDir(), Buffer: relay.BufferConfig{MaxBytes: maxBytes}}
	r, err := relay.New(cfg, &e2eSource{gen: gen, windows: windows}, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					b.Errorf("relay Run: %v", err)
				}
			case <-time.After(15 * time.Second):
				b.Error("relay Run did not return within 15s of cancel")
			}
		})
	}
	b.Cleanup(stop)
	deadline := time.Now().Add(2 * time.Minute)
	for r.Addr() == "" || r.Buffer().Info().Windows < int(windows) {
		select {
		case err := <-done:
			once.Do(func() {})
			b.Fatalf("relay Run: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("the relay holds %d of %d windows after 2 minutes", r.Buffer().Info().Windows, windows)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if in := r.Buffer().Info(); in.LowWatermark != 0 || in.MaxSCN != windows {
		b.Fatalf("the relay holds windows %d..%d (low watermark %d), want 1..%d", in.MinSCN, in.MaxSCN, in.LowWatermark, windows)
	}
	return r, "http://" + r.Addr(), stop
}

// countHandler counts events and cancels its Run once it has seen want.
type countHandler struct {
	want, seen int
	cancel     context.CancelFunc
}

func (h *countHandler) OnWindow(_ context.Context, w *Window) error {
	h.seen += len(w.Events)
	if h.seen >= h.want {
		h.cancel()
	}
	return nil
}

func (h *countHandler) OnRollback(context.Context, uint64, error) {}

// e2eWindows is the number of windows that give each of n clients its share
// of b.N events.
func e2eWindows(b *testing.B, n int) uint64 {
	per := (b.N + n - 1) / n
	return uint64(max(1, (per+e2eEventsPerWindow-1)/e2eEventsPerWindow))
}

// report reports throughput over the benchmark's elapsed time.
func report(b *testing.B, events, bytes int64) {
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(events)/sec, "events/s")
	b.ReportMetric(float64(bytes)/sec/1e6, "MB/s")
}

// BenchmarkClientStream measures a real relay streaming to Go clients over
// loopback HTTP, every event decoded into Windows and counted by a Handler,
// next to what bounds it, measured in the same run:
//
//   - clients=N: N Clients, each reading every window from the start of the
//     relay's buffer (pre-filled before the timer starts) to its end.
//   - ceiling/clients=N: the same bytes in the same 1 MiB batches, served by
//     a plain net/http handler and read by a plain http.Client loop, with no
//     decoding: the cost of HTTP over loopback alone.
//   - decode-ceiling: event.Decode over the same frames in memory (checksums
//     included): the least any client must spend per event.
//   - decode-windows: the client's own decoder over the same 1 MiB batches,
//     in memory: decode-ceiling plus building Windows and Events.
//
// One op is one event delivered to one client: the relay holds b.N/N events
// for N clients. Run with -benchtime Nx; 2000000x takes ~420 MB per data set.
func BenchmarkClientStream(b *testing.B) {
	gen := newE2EGen(b)
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) { benchClients(b, gen, n) })
	}
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("ceiling/clients=%d", n), func(b *testing.B) { benchCeiling(b, gen, n) })
	}
	b.Run("decode-ceiling", func(b *testing.B) {
		windows := gen.encode(b, e2eWindows(b, 1))
		data := batches(windows)
		b.ReportAllocs()
		b.ResetTimer()
		var events, size int64
		for _, body := range data {
			for off := 0; off < len(body); {
				e, n, err := event.Decode(body[off:])
				if err != nil {
					b.Fatal(err)
				}
				if e.Kind == event.KindData {
					events++
				}
				off += n
			}
			size += int64(len(body))
		}
		b.StopTimer()
		report(b, events, size)
	})
	b.Run("decode-windows", func(b *testing.B) {
		windows := gen.encode(b, e2eWindows(b, 1))
		data := batches(windows)
		reg := schema.NewRegistry()
		if _, err := reg.Put(personV1()); err != nil {
			b.Fatal(err)
		}
		d := windowDecoder{reg: reg, exactCounts: true}
		b.ReportAllocs()
		b.ResetTimer()
		var events, size int64
		for _, body := range data {
			ws, n, err := d.decode(body, false)
			if err != nil || n != len(body) {
				b.Fatalf("decode: %d of %d bytes: %v", n, len(body), err)
			}
			for _, w := range ws {
				events += int64(len(w.Events))
			}
			size += int64(n)
		}
		b.StopTimer()
		report(b, events, size)
	})
}

// benchClients runs n Clients over a real relay.
func benchClients(b *testing.B, gen *e2eGen, n int) {
	// The clients share the relay's process here: under the relay's soft
	// memory limit (buffer + 48 MiB) the collector would run for their
	// garbage as if they were part of the relay. Leave the limit unset, as
	// for relay's BenchmarkStream.
	b.Setenv("GOMEMLIMIT", "off")
	windows := e2eWindows(b, n)
	r, base, stop := startE2ERelay(b, gen, windows)
	defer stop()
	// The ceilings serve e2eGen.encode's bytes: check they are the relay's.
	ws, err := r.Buffer().Read(0, 1, nil)
	if err != nil || len(ws) != 1 || !bytes.Equal(ws[0].Data, gen.encode(b, 1)[0]) {
		b.Fatalf("the relay's first window differs from e2eGen.encode's (%v)", err)
	}

	want := int(windows) * e2eEventsPerWindow
	hs := make([]*countHandler, n)
	cs := make([]*Client, n)
	for i := range cs {
		hs[i] = &countHandler{want: want}
		if cs[i], err = New([]string{base}, hs[i], WithStart(checkpoint.Start()), WithMaxBytes(e2eBatch)); err != nil {
			b.Fatal(err)
		}
	}
	errs := make(chan error, n)
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	for i, c := range cs {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			hs[i].cancel = cancel
			if err := c.Run(ctx); !errors.Is(err, context.Canceled) {
				errs <- fmt.Errorf("client %d: Run: %v", i, err)
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Error(err)
	}
	var events, size int64
	for i, c := range cs {
		st := c.Stats()
		if hs[i].seen != want || st.Checkpoint != windows {
			b.Errorf("client %d saw %d events up to scn %d, want %d up to %d", i, hs[i].seen, st.Checkpoint, want, windows)
		}
		events += int64(hs[i].seen)
		size += int64(st.Bytes)
	}
	report(b, events, size)
}

// benchCeiling serves the relay's bytes from a plain handler to n plain
// HTTP loops.
func benchCeiling(b *testing.B, gen *e2eGen, n int) {
	windows := e2eWindows(b, n)
	data := batches(gen.encode(b, windows))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i, _ := strconv.Atoi(r.URL.Query().Get("batch"))
		w.Header().Set("Content-Length", strconv.Itoa(len(data[i])))
		w.Write(data[i])
	}))
	defer srv.Close()

	errs := make(chan error, n)
	var wg sync.WaitGroup
	hcs := make([]*http.Client, n)
	for i := range hcs {
		hcs[i] = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	sizes := make([]int64, n)
	b.ReportAllocs()
	b.ResetTimer()
	for i, hc := range hcs {
		wg.Go(func() {
			defer hc.CloseIdleConnections()
			buf := make([]byte, 2*e2eBatch)
			for j := range data {
				nb, err := ceilingGet(hc, srv.URL+"/?batch="+strconv.Itoa(j), buf)
				if err != nil {
					errs <- err
					return
				}
				sizes[i] += int64(nb)
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	var size int64
	for _, s := range sizes {
		size += s
	}
	report(b, int64(n)*int64(windows)*e2eEventsPerWindow, size)
}

// ceilingGet reads one batch into buf, with no decoding.
func ceilingGet(hc *http.Client, url string, buf []byte) (int, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength < 0 || int(resp.ContentLength) > len(buf) {
		return 0, fmt.Errorf("ceiling: status %d, %d bytes", resp.StatusCode, resp.ContentLength)
	}
	return io.ReadFull(resp.Body, buf[:resp.ContentLength])
}
