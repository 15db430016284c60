package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
)

// BootstrapHandler is implemented by handlers that want to hear when the
// client bootstraps from a bootstrap server (see WithBootstrap). Both calls
// are made on Run's goroutine, under the callback budget; an error is
// retried like a failed window (WithRetry), and the last one stops Run with
// a *HandlerError.
type BootstrapHandler interface {
	// OnBootstrapStart is called before the first window of a bootstrap,
	// and again when Run resumes an unfinished one. When b.Snapshot is set
	// and b.Resumed is not, the snapshot will deliver every row as of
	// b.StartSCN but no delete for rows gone since the handler's copy was
	// made: a handler that materialises rows must discard them now.
	OnBootstrapStart(ctx context.Context, b BootstrapInfo) error
	// OnBootstrapEnd is called when the catch-up has delivered every window
	// up to b.TargetSCN, before the client returns to the relays. While the
	// bootstrap service is seeding a table, the catch-up goes on until the
	// seed is done: seeded rows are only in the bootstrap log.
	OnBootstrapEnd(ctx context.Context, b BootstrapInfo) error
}

// BootstrapInfo describes a bootstrap.
type BootstrapInfo struct {
	// Snapshot: the bootstrap begins (OnBootstrapStart) with a snapshot at
	// StartSCN; when it is false the client only catches up on the log from
	// StartSCN, its checkpoint when it fell off the relays. In
	// OnBootstrapEnd it says whether the snapshot delivered any row.
	Snapshot bool
	// Resumed: Run is continuing a bootstrap an earlier Run (or process)
	// began; the snapshot rows delivered before are not delivered again.
	Resumed bool
	// StartSCN is the snapshot's SCN (or the checkpoint the catch-up starts
	// after); TargetSCN the window the catch-up ends at (0 until known).
	StartSCN  uint64
	TargetSCN uint64
	// Rows is the number of snapshot rows delivered so far.
	Rows uint64
	// Store is the bootstrap store's id.
	Store string
}

// Bootstrap phases reported by Stats.Phase.
const (
	PhaseOnline   = "online"
	PhaseSnapshot = "snapshot"
	PhaseCatchup  = "catchup"
)

// errCaughtUp ends a bootstrap phase's stream after its last window.
var errCaughtUp = errors.New("databus: bootstrap phase complete")

// bootState is the progress Stats reports.
type bootState struct {
	mu                   sync.Mutex
	phase                string
	start, target, total uint64
	rows                 atomic.Uint64
	started              time.Time
}

// setOnline records that the client streams from the relays, keeping the
// figures of the last bootstrap.
func (c *Client) setOnline() {
	c.boot.mu.Lock()
	defer c.boot.mu.Unlock()
	if c.boot.phase != PhaseOnline {
		c.boot.phase, c.boot.started = PhaseOnline, time.Now()
	}
}

func (c *Client) setPhase(phase string, start, target, total uint64) {
	c.boot.mu.Lock()
	defer c.boot.mu.Unlock()
	if c.boot.phase != phase {
		c.boot.started = time.Now()
	}
	c.boot.phase, c.boot.start, c.boot.target, c.boot.total = phase, start, target, total
}

// serverInfo is the bootstrap server's GET /v1/info (docs/BOOTSTRAP.md).
type serverInfo struct {
	Store        string `json:"store"`
	HeadSCN      uint64 `json:"headScn"`
	LowWatermark uint64 `json:"lowWatermark"`
	Rows         uint64 `json:"rows"`
	Seeds        []struct {
		Done bool `json:"done"`
	} `json:"seeds"`
}

// seeding reports whether a seed has rows still to copy into the log.
func (i *serverInfo) seeding() bool {
	for _, s := range i.Seeds {
		if !s.Done {
			return true
		}
	}
	return false
}

func catchupAt(scn uint64, b checkpoint.Bootstrap) checkpoint.Checkpoint {
	return checkpoint.Checkpoint{V: checkpoint.Version, Mode: checkpoint.BootstrapCatchup, SCN: scn, Bootstrap: &b}
}

// filterValues are the sources and partition parameters of every request.
func (c *Client) filterValues() url.Values {
	v := url.Values{}
	if len(c.cfg.sources) > 0 {
		v.Set("sources", strings.Join(c.cfg.sources, ","))
	}
	if c.cfg.partition != "" {
		v.Set("partition", c.cfg.partition)
	}
	return v
}

// runBootstrap takes the consumer from a bootstrap checkpoint (or from an
// online one the relays no longer hold) back to an online checkpoint,
// phase by phase; every phase persists its progress, so a Run killed at
// any point resumes where it stopped.
//
// resumed says that cp was loaded at the start of Run: a catch-up it names
// was begun by an earlier Run, whose OnBootstrapStart the handler heard.
func (c *Client) runBootstrap(ctx context.Context, cp checkpoint.Checkpoint, resumed bool) (checkpoint.Checkpoint, error) {
	for cp.Mode != checkpoint.Online {
		var err error
		switch cp.Mode {
		case checkpoint.BootstrapSnapshot:
			cp, err = c.runSnapshot(ctx, cp)
		case checkpoint.BootstrapCatchup:
			cp, err = c.runCatchup(ctx, cp, resumed)
		}
		resumed = false
		if err != nil {
			return cp, err
		}
	}
	return cp, nil
}

// fallOff decides how a consumer at online checkpoint scn, which no relay
// holds any more, gets back: by catching up on the bootstrap log when it
// holds the windows after scn, by a new snapshot otherwise.
func (c *Client) fallOff(ctx context.Context, scn uint64) (checkpoint.Checkpoint, error) {
	for attempt := 1; ; attempt++ {
		info, err := c.info(ctx, false)
		if err != nil {
			return checkpoint.At(scn), err
		}
		switch {
		case scn < info.LowWatermark:
			c.cfg.logger.Warn("databus: the bootstrap log no longer holds the checkpoint either: starting a snapshot",
				"checkpoint", scn, "lowWatermark", info.LowWatermark)
			return checkpoint.FullHistory(), nil
		case scn <= info.HeadSCN:
			b := checkpoint.Bootstrap{StartSCN: scn, TargetSCN: info.HeadSCN, Store: info.Store}
			cp := catchupAt(scn, b)
			c.cfg.logger.Info("databus: catching up from the bootstrap log", "from", scn, "target", info.HeadSCN)
			if err := c.bootstrapCallback(ctx, true, BootstrapInfo{StartSCN: scn, TargetSCN: info.HeadSCN, Store: info.Store}); err != nil {
				return checkpoint.At(scn), err
			}
			c.advance(ctx, cp)
			return cp, nil
		}
		// The store is behind the consumer: it will catch up with the relay.
		d := backoff(attempt, c.cfg.relayMin, c.cfg.relayMax, jitter())
		c.cfg.logger.Warn("databus: the bootstrap store is behind the checkpoint; waiting for it", "checkpoint", scn, "head", info.HeadSCN, "backoff", d)
		if err := sleep(ctx, d); err != nil {
			return checkpoint.At(scn), err
		}
	}
}

// restartable reports whether err means that the bootstrap in progress
// cannot go on and must start over with a new snapshot: the store was
// replaced (foreign checkpoint) or purged the log the bootstrap needs.
func restartable(err error) bool {
	var (
		nh *SCNNotHeldError
		re *RelayError
	)
	return errors.As(err, &nh) || errors.As(err, &re) && re.Code == "foreign_checkpoint"
}

// runSnapshot delivers the snapshot pages after cp's position and returns
// the catch-up checkpoint that follows them.
func (c *Client) runSnapshot(ctx context.Context, cp checkpoint.Checkpoint) (checkpoint.Checkpoint, error) {
	info, err := c.info(ctx, true)
	if err != nil {
		return cp, err
	}
	if cp.IsNewBootstrap() {
		cp = checkpoint.Checkpoint{V: checkpoint.Version, Mode: checkpoint.BootstrapSnapshot,
			Bootstrap: &checkpoint.Bootstrap{StartSCN: info.HeadSCN, TargetSCN: info.HeadSCN, Store: info.Store}}
		c.advance(ctx, cp)
		c.cfg.logger.Info("databus: bootstrap snapshot starting", "startScn", info.HeadSCN, "rows", info.Rows, "store", info.Store)
	}
	b := *cp.Bootstrap
	c.setPhase(PhaseSnapshot, b.StartSCN, 0, info.Rows)
	c.boot.rows.Store(b.Rows)
	bi := BootstrapInfo{Snapshot: true, Resumed: b.After != "" || b.Rows > 0, StartSCN: b.StartSCN, Rows: b.Rows, Store: b.Store}
	if err := c.bootstrapCallback(ctx, true, bi); err != nil {
		return cp, err
	}

	sp := &snapshotPuller{p: c.bootPuller(0), b: b}
	k := newCore(0, c.cfg.retryAttempts, c.cfg.every)
	err = c.runPhase(ctx, k, func(ctx context.Context, q chan<- item) { sp.run(ctx, q) })
	if !errors.Is(err, errCaughtUp) {
		if restartable(err) {
			c.cfg.logger.Warn("databus: the bootstrap snapshot cannot go on; starting a new one", "err", err)
			return checkpoint.FullHistory(), nil
		}
		return c.Checkpoint(), err
	}
	info, err = c.info(ctx, false)
	if err != nil {
		return c.Checkpoint(), err
	}
	if info.Store != b.Store || info.HeadSCN < b.StartSCN {
		c.cfg.logger.Warn("databus: the bootstrap store changed during the snapshot; starting a new one", "store", info.Store, "was", b.Store)
		return checkpoint.FullHistory(), nil
	}
	done := c.Checkpoint().Bootstrap
	b.Rows = done.Rows
	b.After, b.TargetSCN = "", info.HeadSCN
	cp = catchupAt(b.StartSCN, b)
	c.advance(ctx, cp)
	c.cfg.logger.Info("databus: bootstrap snapshot done; catching up", "rows", b.Rows, "startScn", b.StartSCN, "targetScn", b.TargetSCN)
	return cp, nil
}

// runCatchup delivers the log windows after cp up to its target, then
// tells the handler the bootstrap ended and returns the online checkpoint
// at the target.
func (c *Client) runCatchup(ctx context.Context, cp checkpoint.Checkpoint, resumed bool) (checkpoint.Checkpoint, error) {
	b := *cp.Bootstrap
	if resumed {
		bi := BootstrapInfo{Snapshot: b.Rows > 0, Resumed: true, StartSCN: b.StartSCN, TargetSCN: b.TargetSCN, Rows: b.Rows, Store: b.Store}
		if err := c.bootstrapCallback(ctx, true, bi); err != nil {
			return cp, err
		}
	}
	settled := false // the last look at the server saw no seed running
	for idle := 0; ; {
		c.setPhase(PhaseCatchup, b.StartSCN, b.TargetSCN, 0)
		p := c.bootPuller(cp.SCN)
		p.catchup = &b
		k := newCore(cp.SCN, c.cfg.retryAttempts, c.cfg.every)
		err := c.runPhase(ctx, k, p.run)
		if !errors.Is(err, errCaughtUp) {
			if restartable(err) {
				c.cfg.logger.Warn("databus: the bootstrap catch-up cannot go on; starting a new snapshot", "err", err)
				return checkpoint.FullHistory(), nil
			}
			return c.Checkpoint(), err
		}
		// Rows a seed copies reach only the bootstrap log, never the
		// relays: while a seed is unfinished the consumer stays on the
		// log, catching up to its new head, so that it misses none.
		info, err := c.info(ctx, false)
		if err != nil {
			return c.Checkpoint(), err
		}
		if info.Store != b.Store {
			c.cfg.logger.Warn("databus: the bootstrap store changed during the catch-up; starting a new snapshot", "store", info.Store, "was", b.Store)
			return checkpoint.FullHistory(), nil
		}
		if !info.seeding() {
			// A seed's last rows are in its last high-watermark window, at
			// or before the head that shows it done: catch up to that
			// head, then return to the relays.
			if info.HeadSCN <= b.TargetSCN || settled {
				break
			}
			settled = true
		} else {
			settled = false
		}
		cp = catchupAt(b.TargetSCN, b)
		if info.HeadSCN > b.TargetSCN {
			idle = 0
			b.TargetSCN = info.HeadSCN
			cp = catchupAt(cp.SCN, b)
			c.setCheckpoint(cp)
			continue
		}
		idle++
		c.cfg.logger.Info("databus: a seed is running: waiting for it on the bootstrap log", "scn", b.TargetSCN)
		if err := sleep(ctx, backoff(idle, c.cfg.relayMin, seedPoll, jitter())); err != nil {
			return c.Checkpoint(), err
		}
	}
	bi := BootstrapInfo{Snapshot: b.Rows > 0, StartSCN: b.StartSCN, TargetSCN: b.TargetSCN, Rows: b.Rows, Store: b.Store}
	if err := c.bootstrapCallback(ctx, false, bi); err != nil {
		return c.Checkpoint(), err
	}
	cp = checkpoint.At(b.TargetSCN)
	c.advance(ctx, cp)
	c.setPhase(PhaseOnline, b.StartSCN, b.TargetSCN, 0)
	c.stats.bootstraps.Add(1)
	c.cfg.logger.Info("databus: bootstrap done; back to the relays", "scn", b.TargetSCN)
	return cp, nil
}

// seedPoll bounds the wait between two looks at a running seed.
const seedPoll = time.Second

// bootPuller is a puller over the bootstrap servers.
func (c *Client) bootPuller(after uint64) *puller {
	p := newPuller(c, after)
	p.servers = c.cfg.bootstraps
	return p
}

// advance moves the client to checkpoint cp between two phases and saves
// it; a failed save is logged and counted, and the phase goes on (as after
// a window).
func (c *Client) advance(ctx context.Context, cp checkpoint.Checkpoint) {
	c.setCheckpoint(cp)
	c.saveCheckpoint(ctx, cp)
}

func (c *Client) setCheckpoint(cp checkpoint.Checkpoint) {
	c.mu.Lock()
	c.cp = cp
	c.mu.Unlock()
}

// bootstrapCallback calls OnBootstrapStart (start) or OnBootstrapEnd, if
// the handler has them, with WithRetry's policy.
func (c *Client) bootstrapCallback(ctx context.Context, start bool, b BootstrapInfo) error {
	bh, ok := c.h.(BootstrapHandler)
	if !ok {
		return nil
	}
	for attempt := 1; ; attempt++ {
		cctx, cancel := c.budget(ctx)
		var err error
		if start {
			err = bh.OnBootstrapStart(cctx, b)
		} else {
			err = bh.OnBootstrapEnd(cctx, b)
		}
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.stats.retries.Add(1)
		if attempt >= c.cfg.retryAttempts {
			return &HandlerError{SCN: b.StartSCN, Attempts: attempt, Err: err}
		}
		c.cfg.logger.Warn("databus: bootstrap handler call failed", "start", start, "attempt", attempt, "err", err)
		if err := sleep(ctx, backoff(attempt, c.cfg.retryMin, c.cfg.retryMax, jitter())); err != nil {
			return err
		}
	}
}

// info fetches GET /v1/info from the bootstrap servers, with the client's
// filters when counted is set (so that Rows counts this consumer's rows).
func (c *Client) info(ctx context.Context, counted bool) (serverInfo, error) {
	var info serverInfo
	p := c.bootPuller(0)
	path := "/v1/info"
	if counted {
		if v := c.filterValues(); len(v) > 0 {
			path += "?" + v.Encode()
		}
	}
	err := p.retry(ctx, func(server string) error {
		rctx, cancel := context.WithTimeout(ctx, c.cfg.reqTimeout)
		defer cancel()
		resp, err := p.get(rctx, server, path)
		if err != nil {
			return err
		}
		defer drainClose(resp.Body)
		info = serverInfo{}
		if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
			return fmt.Errorf("%w: bootstrap server %s: /v1/info: %v", ErrProtocol, server, err)
		}
		if info.Store == "" {
			return fmt.Errorf("%w: bootstrap server %s: /v1/info names no store", ErrProtocol, server)
		}
		return nil
	})
	return info, err
}

// snapshotPuller fetches snapshot pages ahead of the dispatcher, each page
// a Window with Snapshot set.
type snapshotPuller struct {
	p   *puller
	b   checkpoint.Bootstrap // progress after the last page fetched
	seq uint64
}

func (sp *snapshotPuller) run(ctx context.Context, q chan<- item) {
	send := func(it item) bool {
		select {
		case q <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		var (
			w    *Window
			done bool
		)
		err := sp.p.retry(ctx, func(server string) (err error) {
			w, done, err = sp.page(ctx, server)
			return err
		})
		if err != nil {
			if ctx.Err() == nil {
				send(item{err: err})
			}
			return
		}
		if !send(item{w: w}) {
			return
		}
		if done {
			send(item{err: errCaughtUp})
			return
		}
	}
}

// page fetches the page after sp.b's position from server.
func (sp *snapshotPuller) page(ctx context.Context, server string) (*Window, bool, error) {
	p, c := sp.p, sp.p.c
	if !p.schemasLoaded {
		if err := p.fetchSchemas(ctx, server); err != nil {
			return nil, false, err
		}
		p.schemasLoaded = true
	}
	v := c.filterValues()
	v.Set("checkpoint", checkpoint.Checkpoint{V: checkpoint.Version, Mode: checkpoint.BootstrapSnapshot, Bootstrap: &sp.b}.String())
	v.Set("maxBytes", strconv.Itoa(c.cfg.maxBytes))
	rctx, cancel := context.WithTimeout(ctx, c.cfg.reqTimeout)
	defer cancel()
	resp, err := p.get(rctx, server, "/v1/snapshot?"+v.Encode())
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	body, err := readBody(resp, func() {})
	if err != nil {
		return nil, false, fmt.Errorf("databus: bootstrap server %s: reading snapshot page: %w", server, err)
	}
	c.stats.requests.Add(1)
	c.stats.bytes.Add(uint64(len(body)))
	after := resp.Header.Get("X-Databus-Snapshot-After")
	done := resp.Header.Get("X-Databus-Snapshot-Done") == "true"
	evs, err := sp.decode(ctx, server, body)
	if err != nil {
		return nil, false, err
	}
	if len(evs) == 0 && !done && after == sp.b.After {
		return nil, false, fmt.Errorf("%w: bootstrap server %s sent an empty snapshot page that is not the last and does not advance", ErrProtocol, server)
	}
	sp.seq++
	sp.b.After = after
	sp.b.Rows += uint64(len(evs))
	b := sp.b
	w := &Window{SCN: b.StartSCN, Snapshot: true, Events: evs, seq: sp.seq,
		cp: checkpoint.Checkpoint{V: checkpoint.Version, Mode: checkpoint.BootstrapSnapshot, Bootstrap: &b}}
	return w, done, nil
}

// decode turns a page body (data frames only) into events, fetching the
// server's schemas once if a frame uses a version the registry lacks.
func (sp *snapshotPuller) decode(ctx context.Context, server string, body []byte) ([]*Event, error) {
	refreshed := false
	for {
		evs, err := sp.decodeOnce(body)
		var us *unknownSchemaError
		if !errors.As(err, &us) || refreshed {
			return evs, err
		}
		if err := sp.p.fetchSchemas(ctx, server); err != nil {
			return nil, err
		}
		refreshed = true
	}
}

func (sp *snapshotPuller) decodeOnce(body []byte) ([]*Event, error) {
	var (
		evs  []Event
		ptrs []*Event
	)
	for off := 0; off < len(body); {
		f, n, err := event.Decode(body[off:])
		if err != nil {
			return nil, fmt.Errorf("%w: snapshot page: %v", ErrProtocol, err)
		}
		off += n
		if f.Kind != event.KindData || f.SCN > sp.b.StartSCN {
			return nil, fmt.Errorf("%w: snapshot page holds a %v frame of scn %d (snapshot at scn %d)", ErrProtocol, f.Kind, f.SCN, sp.b.StartSCN)
		}
		entry, ok := sp.p.dec.lookup(f.Source, f.SchemaVersion)
		if !ok {
			return nil, &unknownSchemaError{source: f.Source, version: f.SchemaVersion}
		}
		if evs == nil {
			evs = make([]Event, 0, 64)
		}
		evs = append(evs, makeEvent(&f, entry))
	}
	ptrs = make([]*Event, len(evs))
	for i := range evs {
		ptrs[i] = &evs[i]
	}
	return ptrs, nil
}
