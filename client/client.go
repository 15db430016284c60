package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/schema"
)

// Client consumes a databus stream from one or more relays and delivers it
// to a Handler. Create it with New and start it with Run. Its methods are
// safe for concurrent use.
type Client struct {
	relays []string // base URLs, no trailing slash
	h      Handler
	cfg    config
	http   *http.Client
	// ownTransport is the transport of the client's own http.Client, whose
	// idle connections Run closes on its way out; nil with WithHTTPClient.
	ownTransport *http.Transport
	// reg holds every schema version seen; it only grows, and outlives
	// Runs.
	reg *schema.Registry

	running atomic.Bool

	mu sync.Mutex
	// cp is the last window fully processed (see Checkpoint).
	cp    checkpoint.Checkpoint // guarded by mu
	relay string                // guarded by mu: the relay pulled from

	boot bootState

	stats struct {
		windows, events, retries, bytes, requests atomic.Uint64
		relayFailures, saves, saveErrors          atomic.Uint64
		relayMaxSCN, bootstraps                   atomic.Uint64
	}
}

// New validates its arguments and returns a Client that pulls from relays,
// base URLs such as "http://relay-1:8080", all capturing the same physical
// sources. It makes no request: Run does.
func New(relays []string, h Handler, opts ...Option) (*Client, error) {
	if h == nil {
		return nil, errors.New("databus: nil Handler")
	}
	if len(relays) == 0 {
		return nil, errors.New("databus: no relay URL")
	}
	c := &Client{h: h, cfg: defaultConfig(), reg: schema.NewRegistry()}
	for _, r := range relays {
		u, err := url.Parse(r)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("databus: relay URL %q: want http(s)://host[:port][/path]", r)
		}
		c.relays = append(c.relays, strings.TrimRight(r, "/"))
	}
	for _, o := range opts {
		if err := o(&c.cfg); err != nil {
			return nil, fmt.Errorf("databus: %w", err)
		}
	}
	if c.cfg.store == nil {
		c.cfg.store = new(MemoryStore)
	}
	if c.cfg.start.Mode != checkpoint.Online && len(c.cfg.bootstraps) == 0 {
		return nil, fmt.Errorf("databus: WithStart: %w: mode %q needs a bootstrap server (WithBootstrap)", ErrNotOnline, c.cfg.start.Mode)
	}
	if c.cfg.httpClient != nil {
		c.http = c.cfg.httpClient
	} else {
		c.ownTransport = http.DefaultTransport.(*http.Transport).Clone()
		c.http = &http.Client{Transport: c.ownTransport}
	}
	c.cp = c.cfg.start
	return c, nil
}

// Run consumes the stream until ctx ends or an error stops it, and returns
// after every goroutine it started has ended.
//
// It loads the checkpoint from the store (or starts from WithStart), pulls
// windows after it and delivers them to the handler; see the package
// documentation for the guarantees. Before returning it saves the last
// processed window's checkpoint if the store is behind.
//
// Run returns ctx.Err() when ctx ends, or:
//   - *SCNNotHeldError when no relay holds the windows after the checkpoint;
//   - *RelayError when a relay refuses the request (bad sources, partition,
//     parameters): retrying cannot help;
//   - *HandlerError when the handler failed on one window as often as
//     WithRetry allows;
//   - *UnavailableError when WithRelayRetry limits pull failures and they
//     reached the limit;
//   - an error wrapping ErrNotOnline (a bootstrap checkpoint without
//     WithBootstrap), or from the store's Load;
//   - ErrRunning when called while another Run has not returned.
//
// A failed final save is joined to the returned error. Run may be called
// again after it returns; it then resumes from the store.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)
	if c.ownTransport != nil {
		defer c.ownTransport.CloseIdleConnections()
	}
	cp, found, err := c.cfg.store.Load(ctx)
	if err != nil {
		return fmt.Errorf("databus: loading checkpoint: %w", err)
	}
	if !found {
		cp = c.cfg.start
	}
	if cp.Mode != checkpoint.Online && len(c.cfg.bootstraps) == 0 {
		return fmt.Errorf("%w (and no bootstrap server is configured, see WithBootstrap): %s", ErrNotOnline, cp)
	}
	c.setCheckpoint(cp)
	c.cfg.logger.Info("databus: client starting", "checkpoint", cp.String(), "stored", found, "relays", c.relays, "bootstrap", c.cfg.bootstraps)
	lastFallOff, fallOffs := uint64(0), 0
	resumed := true
	for {
		if cp.Mode != checkpoint.Online {
			cp, err = c.runBootstrap(ctx, cp, resumed)
			if err != nil {
				c.cfg.logger.Info("databus: client stopped", "checkpoint", c.Checkpoint().String(), "err", err)
				return err
			}
		}
		resumed = false
		c.setOnline()
		err = c.runOnline(ctx, cp.SCN)
		var nh *SCNNotHeldError
		if !errors.As(err, &nh) || len(c.cfg.bootstraps) == 0 {
			return err
		}
		// Fallen off the relays. A fall-off right after a catch-up that
		// made no progress (the store no further than the relays' oldest
		// window) waits before trying again.
		cp = c.Checkpoint()
		if fallOffs > 0 && cp.SCN == lastFallOff {
			d := backoff(fallOffs, c.cfg.relayMin, c.cfg.relayMax, jitter())
			c.cfg.logger.Warn("databus: still behind the relays after a catch-up; waiting", "checkpoint", cp.SCN, "backoff", d)
			if err := sleep(ctx, d); err != nil {
				return err
			}
		} else {
			fallOffs = 0
		}
		lastFallOff = cp.SCN
		fallOffs++
		c.cfg.logger.Warn("databus: the relays no longer hold the checkpoint; falling back to the bootstrap servers", "err", err)
		if cp, err = c.fallOff(ctx, cp.SCN); err != nil {
			return err
		}
	}
}

// runOnline consumes the relays' stream after window scn.
func (c *Client) runOnline(ctx context.Context, scn uint64) error {
	p := newPuller(c, scn)
	return c.runPhase(ctx, newCore(scn, c.cfg.retryAttempts, c.cfg.every), p.run)
}

// runPhase runs fetch on a goroutine of its own, feeding a bounded queue,
// and the dispatcher on the calling goroutine, until the dispatcher stops;
// it saves the checkpoint if the store is behind, and returns when both
// have ended.
func (c *Client) runPhase(parent context.Context, k *core, fetch func(context.Context, chan<- item)) error {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	q := make(chan item, c.cfg.bufferWindows)
	var wg sync.WaitGroup
	wg.Go(func() { fetch(ctx, q) })

	err := c.dispatch(ctx, q, k)
	cancel()
	wg.Wait()
	if parent.Err() != nil {
		err = parent.Err()
	}
	if k.pending() {
		sctx, scancel := context.WithTimeout(context.WithoutCancel(parent), saveTimeout)
		defer scancel()
		if serr := c.save(sctx, k); serr != nil {
			err = errors.Join(err, fmt.Errorf("databus: saving checkpoint on exit: %w", serr))
		}
	}
	if !errors.Is(err, errCaughtUp) {
		c.cfg.logger.Info("databus: client stopped", "checkpoint", c.Checkpoint().String(), "err", err)
	}
	return err
}

// Checkpoint returns the checkpoint after the last window the handler
// processed (the store may be up to WithCheckpointEvery windows behind
// while Run runs). Before Run has loaded it, it is the WithStart one.
func (c *Client) Checkpoint() checkpoint.Checkpoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cp
}

func (c *Client) setRelay(r string) {
	c.mu.Lock()
	c.relay = r
	c.mu.Unlock()
}

// Schemas returns every schema version the client has learned (from the
// relays' /v1/schemas and from schema-change frames), ordered by source id
// and version. It only ever grows.
func (c *Client) Schemas() []schema.Table {
	var ts []schema.Table
	for _, l := range c.reg.Latests() {
		for _, e := range c.reg.Versions(l.ID) {
			ts = append(ts, e.Table)
		}
	}
	return ts
}

// Stats is a snapshot of a Client's counters, cumulative over its Runs.
type Stats struct {
	Windows uint64 // windows processed (delivered, or empty)
	Events  uint64 // events in processed windows
	// Retries counts failed deliveries of a window, each followed by
	// OnRollback.
	Retries       uint64
	Bytes         uint64 // bytes of stream responses received
	Requests      uint64 // stream responses received
	RelayFailures uint64 // failed pulls (then retried or given up)
	Saves         uint64 // checkpoints saved
	SaveErrors    uint64 // failed saves
	Checkpoint    uint64 // SCN of the last window processed
	// RelayMaxSCN is the newest SCN the relay last said it holds
	// (X-Databus-Max-Scn); LagSCN is how far Checkpoint is behind it.
	RelayMaxSCN uint64
	LagSCN      uint64
	Relay       string // the relay currently pulled from

	// Phase is PhaseOnline, PhaseSnapshot or PhaseCatchup. During a
	// bootstrap, StartSCN and TargetSCN are its bounds (TargetSCN 0 during
	// the snapshot), Rows the snapshot rows delivered, RowsTotal the
	// server's count of the snapshot's rows when it began, and
	// PhaseStarted when the phase began: enough for a progress line.
	Phase        string
	StartSCN     uint64
	TargetSCN    uint64
	Rows         uint64
	RowsTotal    uint64
	PhaseStarted time.Time
	// Bootstraps counts the bootstraps completed (back online).
	Bootstraps uint64
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	s := Stats{Checkpoint: c.cp.SCN, Relay: c.relay}
	c.mu.Unlock()
	s.Windows = c.stats.windows.Load()
	s.Events = c.stats.events.Load()
	s.Retries = c.stats.retries.Load()
	s.Bytes = c.stats.bytes.Load()
	s.Requests = c.stats.requests.Load()
	s.RelayFailures = c.stats.relayFailures.Load()
	s.Saves = c.stats.saves.Load()
	s.SaveErrors = c.stats.saveErrors.Load()
	s.RelayMaxSCN = c.stats.relayMaxSCN.Load()
	c.boot.mu.Lock()
	s.Phase, s.StartSCN, s.TargetSCN, s.RowsTotal, s.PhaseStarted = c.boot.phase, c.boot.start, c.boot.target, c.boot.total, c.boot.started
	c.boot.mu.Unlock()
	if s.Phase == "" {
		s.Phase = PhaseOnline
	}
	s.Rows = c.boot.rows.Load()
	s.Bootstraps = c.stats.bootstraps.Load()
	if s.RelayMaxSCN > s.Checkpoint {
		s.LagSCN = s.RelayMaxSCN - s.Checkpoint
	}
	return s
}
