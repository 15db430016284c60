package relay

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// Benchmark shape: ~200-byte events, 10 per window, 1 MiB batches.
const (
	benchEventsPerWindow = 10
	benchBatch           = 1 << 20
)

// benchSource generates windows on the fly up to a fixed SCN, then idles.
type benchSource struct{ windows uint64 }

func (s *benchSource) Open(context.Context) ([]schema.Table, error) {
	return []schema.Table{personV1}, nil
}

func (s *benchSource) Run(ctx context.Context, from source.Position, emit func(context.Context, *source.Window) error) error {
	payload := make([]byte, 200-event.HeaderSize-9-event.TrailerSize)
	w := source.Window{Events: make([]event.Event, benchEventsPerWindow)}
	for scn := from.SCN + 1; scn <= s.windows; scn++ {
		w.SCN, w.Timestamp, w.Position = scn, int64(scn)*1000, source.Position{SCN: scn}
		for i := range w.Events {
			w.Events[i] = event.Event{Kind: event.KindData, Op: event.OpInsert, SCN: scn, Timestamp: w.Timestamp, Source: 1, SchemaVersion: 1,
				Key: event.AppendKeyInt(nil, int64(scn)*benchEventsPerWindow+int64(i)), Payload: payload}
		}
		if err := emit(ctx, &w); err != nil {
			return err
		}
	}
	<-ctx.Done()
	return ctx.Err()
}

func (s *benchSource) Release(context.Context, source.Position) error { return nil }
func (s *benchSource) Close() error                                   { return nil }

// benchClient pulls batches until it has done its share of b.N, walking
// frames with event.FrameLen and following the end-of-window SCNs.
type benchClient struct {
	http   *http.Client
	url    func(after uint64) string
	buf    []byte
	starts []uint64 // checkpoints that begin the relay's batches, ascending
	newest uint64
}

func (c *benchClient) pull(after uint64) (next uint64, events, n int, err error) {
	resp, err := c.http.Get(c.url(after))
	if err != nil {
		return 0, 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return 0, 0, 0, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	if int(resp.ContentLength) > cap(c.buf) {
		c.buf = make([]byte, resp.ContentLength)
	}
	body := c.buf[:resp.ContentLength]
	if _, err := io.ReadFull(resp.Body, body); err != nil {
		return 0, 0, 0, err
	}
	next = after
	for off := 0; off < len(body); {
		l, err := event.FrameLen(body[off:])
		if err != nil {
			return 0, 0, 0, err
		}
		switch event.Kind(body[off+1]) {
		case event.KindData:
			events++
		case event.KindEndOfWindow:
			next = binary.BigEndian.Uint64(body[off+8:])
		}
		off += l
	}
	return next, events, len(body), nil
}

// runClients spreads b.N batches over n concurrent clients.
func runClients(b *testing.B, n int, newClient func() *benchClient) {
	var ops, events, bytes atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	cs := make([]*benchClient, n)
	for i := range cs {
		cs[i] = newClient()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i, c := range cs {
		wg.Go(func() {
			defer c.http.CloseIdleConnections()
			after := c.starts[i*len(c.starts)/n] // spread clients over the buffer
			for ops.Add(1) <= int64(b.N) {
				next, ev, nb, err := c.pull(after)
				if err != nil {
					errs <- err
					return
				}
				events.Add(int64(ev))
				bytes.Add(int64(nb))
				after = next
				if after >= c.newest {
					after = 0
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(events.Load())/sec, "events/s")
	b.ReportMetric(float64(bytes.Load())/sec/1e6, "MB/s")
	b.ReportMetric(float64(events.Load())/float64(b.N), "events/op")
}

// BenchmarkStream measures relay → client over real loopback HTTP, next to
// the ceiling: a plain net/http handler serving the same pre-encoded
// batches, read by the same client code.
func BenchmarkStream(b *testing.B) {
	windows := uint64(48<<20) / (benchEventsPerWindow*200 + 64) // ~48 MiB of 200-byte events
	// The ceiling keeps a second copy of the data in this process, which
	// would eat the headroom of the relay's soft memory limit and make the
	// collector run all the time, for both sides: leave the limit unset.
	b.Setenv("GOMEMLIMIT", "off")
	cfg := testConfig(b)
	cfg.Buffer.MaxBytes = 64 * MiB
	h := startRelaySource(b, nil, &benchSource{windows: windows}, cfg)
	h.waitSCN(windows)

	// The relay's own batches, pre-encoded, keyed by the checkpoint that asks for them.
	batches := map[uint64][]byte{}
	var starts []uint64
	for after := uint64(0); after < windows; {
		starts = append(starts, after)
		ws, err := h.r.Buffer().Read(after, benchBatch, nil)
		if err != nil {
			b.Fatal(err)
		}
		var batch []byte
		for _, w := range ws {
			batch = append(batch, w.Data...)
		}
		batches[after] = batch
		after = ws[len(ws)-1].SCN
	}
	ceiling := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		batch := batches[after]
		w.Header().Set("Content-Length", strconv.Itoa(len(batch)))
		w.Write(batch)
	}))
	b.Cleanup(ceiling.Close)

	newClient := func(url func(uint64) string) func() *benchClient {
		return func() *benchClient {
			return &benchClient{http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}, url: url,
				buf: make([]byte, 2*benchBatch), starts: starts, newest: windows}
		}
	}
	relayURL := func(after uint64) string {
		return h.base + "/v1/stream?wait=0s&maxBytes=" + strconv.Itoa(benchBatch) + "&checkpoint=" + url.QueryEscape(cp(after))
	}
	ceilingURL := func(after uint64) string { return ceiling.URL + "/?after=" + strconv.FormatUint(after, 10) }
	for _, n := range []int{1, 16} {
		b.Run(fmt.Sprintf("clients=%d/relay", n), func(b *testing.B) { runClients(b, n, newClient(relayURL)) })
		b.Run(fmt.Sprintf("clients=%d/ceiling", n), func(b *testing.B) { runClients(b, n, newClient(ceilingURL)) })
	}
}
