package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/client"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/eventjson"
)

type tailOptions struct {
	relays         []string
	bootstraps     []string
	fromStart      bool
	fromNow        bool
	checkpointFile string
	sources        []string
	partition      string
	windows        bool
	token          string
	// progress receives bootstrap progress lines (nil: none).
	progress io.Writer
}

func newTailCmd() *cobra.Command {
	var o tailOptions
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Print a relay's stream as JSON lines, one per event",
		Long: `Print a relay's stream as JSON lines: one object per event and, with --windows
(the default), one per end of window. Starts from now unless --from-start or a
--checkpoint-file that already holds a position says otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.fromStart && o.fromNow {
				return usageError("--from-start and --from-now exclude each other")
			}
			o.progress = cmd.ErrOrStderr()
			return runTail(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.relays, "relay", []string{"http://127.0.0.1:8080"}, "relay URLs, tried in order on failure")
	f.StringSliceVar(&o.bootstraps, "bootstrap", nil, "bootstrap server URLs: --from-start then reads the full history, and a tail that falls behind the relays catches up from them")
	f.BoolVar(&o.fromStart, "from-start", false, "start from the oldest window the relay holds, or with --bootstrap from a snapshot of the full history")
	f.BoolVar(&o.fromNow, "from-now", false, "start after the newest window (the default without a checkpoint)")
	f.StringVar(&o.checkpointFile, "checkpoint-file", "", "persist the position here and resume from it")
	f.StringSliceVar(&o.sources, "sources", nil, "only these sources (names, comma-separated)")
	f.StringVar(&o.partition, "partition", "", "only this key partition: mod:3/8, range:0-1000")
	f.BoolVar(&o.windows, "windows", true, "print a line at each end of window")
	f.StringVar(&o.token, "token", "", "bearer token for relays that require one")
	return cmd
}

func runTail(ctx context.Context, out io.Writer, o tailOptions) error {
	hc := &http.Client{Transport: bearer(o.token)}
	w := bufio.NewWriterSize(out, 64<<10)
	p := &printer{w: w, windows: o.windows}
	opts := []client.Option{client.WithHTTPClient(hc), client.WithName("tail"), client.WithEmptyWindows()}
	if o.checkpointFile != "" {
		opts = append(opts, client.WithCheckpointStore(client.NewFileStore(o.checkpointFile)))
	}
	if len(o.sources) > 0 {
		opts = append(opts, client.WithSources(o.sources...))
	}
	if o.partition != "" {
		opts = append(opts, client.WithPartition(o.partition))
	}
	if len(o.bootstraps) > 0 {
		opts = append(opts, client.WithBootstrap(o.bootstraps...))
	}
	// Every flag is checked before the first request, so that a bad one is
	// reported as itself rather than as an unreachable relay.
	if _, err := client.New(o.relays, p, opts...); err != nil {
		return err
	}
	// One request to the relays even with --from-start: client.Run retries
	// unreachable relays forever, which suits a running tail but not a
	// mistyped --relay.
	scn, err := newestSCN(ctx, hc, o.relays)
	if err != nil {
		return err
	}
	start := checkpoint.Start()
	switch {
	case o.fromStart && len(o.bootstraps) > 0:
		start = checkpoint.FullHistory()
	case !o.fromStart:
		start = checkpoint.At(scn)
	}
	c, err := client.New(o.relays, p, append(opts, client.WithStart(start))...)
	if err != nil {
		return err
	}
	if o.progress == nil {
		return c.Run(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		reportProgress(ctx, o.progress, c)
	}()
	err = c.Run(ctx)
	cancel()
	<-done
	return err
}

// reportProgress writes a progress line to w every second while c
// bootstraps, and one when it is back online (also when Run ends first).
func reportProgress(ctx context.Context, w io.Writer, c *client.Client) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var (
		last time.Time
		done uint64 // bootstraps reported
	)
	for {
		stopping := false
		select {
		case <-ctx.Done():
			stopping = true
		case <-t.C:
		}
		st := c.Stats()
		if line := progressLine(st, time.Now()); line != "" && time.Since(last) >= time.Second && !stopping {
			fmt.Fprintln(w, line)
			last = time.Now()
		}
		if st.Bootstraps > done {
			done = st.Bootstraps
			fmt.Fprintf(w, "bootstrap: done: %d snapshot rows at scn %d, caught up to scn %d; streaming from the relay\n", st.Rows, st.StartSCN, st.TargetSCN)
		}
		if stopping {
			return
		}
	}
}

// progressLine describes a bootstrap in progress ("" when online).
func progressLine(st client.Stats, now time.Time) string {
	elapsed := now.Sub(st.PhaseStarted).Seconds()
	switch st.Phase {
	case client.PhaseSnapshot:
		line := fmt.Sprintf("bootstrap: snapshot at scn %d: %d", st.StartSCN, st.Rows)
		if st.RowsTotal > 0 {
			line += fmt.Sprintf("/%d rows (%.0f%%)", st.RowsTotal, 100*float64(st.Rows)/float64(max(st.RowsTotal, st.Rows)))
		} else {
			line += " rows"
		}
		if elapsed > 0 && st.Rows > 0 {
			rate := float64(st.Rows) / elapsed
			line += fmt.Sprintf(", %.0f rows/s", rate)
			if st.RowsTotal > st.Rows {
				line += ", ETA " + time.Duration(float64(st.RowsTotal-st.Rows)/rate*float64(time.Second)).Round(time.Second).String()
			}
		}
		return line
	case client.PhaseCatchup:
		return fmt.Sprintf("bootstrap: catching up from the log: scn %d of %d (from %d)", st.Checkpoint, st.TargetSCN, st.StartSCN)
	}
	return ""
}

// printer renders windows as JSON lines. Output is flushed at each window
// boundary, so a reader of a pipe sees whole windows.
type printer struct {
	w       *bufio.Writer
	windows bool
	line    []byte
}

func (p *printer) OnWindow(_ context.Context, win *client.Window) error {
	for _, e := range win.Events {
		ev := event.Event{Kind: event.KindData, Op: e.Op, SCN: e.SCN, Timestamp: e.Timestamp.UnixNano(), Source: e.SourceID,
			SchemaVersion: e.SchemaVersion, Key: e.Key, Payload: e.Payload, Before: e.Before, HasBefore: e.HasBefore}
		p.line = eventjson.Append(p.line[:0], &ev, eventjson.Entry{Entry: e.Schema()})
		p.w.Write(p.line)
	}
	if p.windows && !win.Snapshot {
		eow := event.EndOfWindow(win.SCN, win.Timestamp.UnixNano(), uint32(len(win.Events)), win.TxID)
		p.line = eventjson.Append(p.line[:0], &eow, nil)
		p.w.Write(p.line)
	}
	return p.w.Flush()
}

func (p *printer) OnRollback(context.Context, uint64, error) {}

// newestSCN asks the relays, in order, for the newest SCN they hold.
func newestSCN(ctx context.Context, hc *http.Client, relays []string) (uint64, error) {
	var last error
	for _, r := range relays {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		scn, err := func() (uint64, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(r, "/")+"/v1/buffer", nil)
			if err != nil {
				return 0, err
			}
			resp, err := hc.Do(req)
			if err != nil {
				return 0, err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
				return 0, fmt.Errorf("%s: %s: %s", r, resp.Status, strings.TrimSpace(string(body)))
			}
			var info struct {
				MaxSCN       uint64 `json:"maxScn"`
				LowWatermark uint64 `json:"lowWatermark"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
				return 0, fmt.Errorf("%s/v1/buffer: %w", r, err)
			}
			return max(info.MaxSCN, info.LowWatermark), nil
		}()
		cancel()
		if err == nil {
			return scn, nil
		}
		last = err
	}
	return 0, fmt.Errorf("no relay answered: %w", last)
}

// bearer returns a transport that adds an Authorization header.
func bearer(token string) http.RoundTripper {
	if token == "" {
		return http.DefaultTransport
	}
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		r = r.Clone(r.Context())
		r.Header.Set("Authorization", "Bearer "+token)
		return http.DefaultTransport.RoundTrip(r)
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
