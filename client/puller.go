package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// framesType is the Content-Type of a binary /v1/stream response.
const framesType = "application/x-databus-frames"

// minPoll is the shortest interval between two stream requests that both
// came back empty, so that WithWait(0) does not spin against the relay.
const minPoll = 100 * time.Millisecond

// puller fetches windows from the relays and hands them to the dispatcher
// in order. It is owned by one runOnline call and used by one goroutine.
type puller struct {
	c   *Client
	dec windowDecoder
	// servers are the base URLs pulled from: the relays, or the bootstrap
	// servers during a catch-up.
	servers []string
	// catchup, when set, makes the puller read the bootstrap log up to its
	// target instead of the relays' stream.
	catchup *checkpoint.Bootstrap
	// next is the index of the relay to pull from; it moves on after every
	// failed pull, so a dead relay is left for the next one.
	next int
	// schemasLoaded is set once the relays' schemas have been fetched.
	schemasLoaded bool
	// failures counts consecutive failed pulls, over every relay.
	failures int
	// notHeld is the last scn_not_held answer since the last successful
	// pull, and sinceNotHeld the failed pulls since the first one: when every
	// relay has had its turn without serving, the client has fallen off.
	notHeld      *SCNNotHeldError
	sinceNotHeld int
}

func newPuller(c *Client, after uint64) *puller {
	return &puller{
		c:       c,
		servers: c.relays,
		dec: windowDecoder{
			reg:         c.reg,
			after:       after,
			exactCounts: len(c.cfg.sources) == 0 && c.cfg.partition == "",
		},
	}
}

// run pulls until ctx ends or a pull fails for good; the error is then
// handed to the dispatcher after every window before it.
func (p *puller) run(ctx context.Context, q chan<- item) {
	send := func(it item) bool {
		select {
		case q <- it:
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		if p.catchup != nil && p.dec.after >= p.catchup.TargetSCN {
			send(item{err: errCaughtUp})
			return
		}
		err := p.retry(ctx, func(relay string) error {
			if p.catchup == nil {
				p.c.setRelay(relay)
			}
			return p.pull(ctx, relay, send)
		})
		if err != nil {
			if ctx.Err() == nil {
				send(item{err: err})
			}
			return
		}
	}
}

// retry calls f with the puller's servers in turn until it succeeds, or
// fails in a way retrying cannot help: a refusal of the request (returned
// as is), scn_not_held from every server since the first one (the last
// *SCNNotHeldError), WithRelayRetry's limit of consecutive failures (an
// *UnavailableError), or ctx ending (ctx's error). Other failures move to
// the next server after a back-off; scn_not_held moves on at once.
func (p *puller) retry(ctx context.Context, f func(server string) error) error {
	for {
		server := p.servers[p.next]
		err := f(server)
		if err == nil {
			p.failures, p.notHeld, p.sinceNotHeld = 0, nil, 0
			return nil
		}
		class := classify(ctx, err)
		switch class {
		case classCanceled:
			return ctx.Err()
		case classFatal:
			return err
		}
		p.failures++
		p.c.stats.relayFailures.Add(1)
		if class == classNotHeld {
			if p.notHeld == nil {
				p.sinceNotHeld = 0
			}
			errors.As(err, &p.notHeld)
		}
		if p.notHeld != nil {
			p.sinceNotHeld++
			if p.sinceNotHeld >= len(p.servers) {
				return p.notHeld
			}
		}
		if max := p.c.cfg.relayAttempts; max > 0 && p.failures >= max {
			return &UnavailableError{Attempts: p.failures, Err: err}
		}
		p.next = (p.next + 1) % len(p.servers)
		d := time.Duration(0)
		if class == classRetry {
			d = backoff(p.failures, p.c.cfg.relayMin, p.c.cfg.relayMax, jitter())
		}
		p.c.cfg.logger.Warn("databus: pull failed, trying the next server", "server", server, "next", p.servers[p.next], "backoff", d, "err", err)
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
}

// pull makes one stream request to relay and sends the windows it got.
// Windows before a failure in the response are sent: they are whole and
// their checksums are good.
func (p *puller) pull(ctx context.Context, relay string, send func(item) bool) error {
	if !p.schemasLoaded {
		if err := p.fetchSchemas(ctx, relay); err != nil {
			return err
		}
		p.schemasLoaded = true
	}
	start := time.Now()
	body, readErr, err := p.stream(ctx, relay)
	if err != nil {
		return err
	}
	ws, n, err := p.dec.decode(body, false)
	if !p.sendAll(ws, send) {
		return ctx.Err()
	}
	if usErr := (*unknownSchemaError)(nil); errors.As(err, &usErr) {
		p.c.cfg.logger.Info("databus: fetching schemas for a version not seen yet", "relay", relay, "source", usErr.source, "version", usErr.version)
		if ferr := p.fetchSchemas(ctx, relay); ferr != nil {
			return ferr
		}
		ws, _, err = p.dec.decode(body[n:], true)
		if !p.sendAll(ws, send) {
			return ctx.Err()
		}
	}
	switch {
	case readErr != nil:
		// The transport's error says more than "ends inside a window".
		return fmt.Errorf("databus: relay %s: reading response: %w", relay, readErr)
	case err != nil:
		return fmt.Errorf("%w (relay %s)", err, relay)
	case len(body) == 0 && p.catchup != nil && p.dec.after < p.catchup.TargetSCN:
		return fmt.Errorf("%w: bootstrap server %s sent no window after scn %d, before the catch-up target %d", ErrProtocol, relay, p.dec.after, p.catchup.TargetSCN)
	case len(body) == 0:
		// Nothing new within the long-poll wait.
		return sleep(ctx, minPoll-time.Since(start))
	}
	return nil
}

// sendAll sends windows in order; during a catch-up each carries the
// catch-up checkpoint after it, so that a consumer stopped there resumes
// its bootstrap rather than going online before the target.
func (p *puller) sendAll(ws []*Window, send func(item) bool) bool {
	for _, w := range ws {
		if p.catchup != nil {
			w.cp = catchupAt(w.SCN, *p.catchup)
		}
		if !send(item{w: w}) {
			return false
		}
	}
	return true
}

// stream makes the GET /v1/stream request. It returns the body read so far
// and the error that cut the read short, or err when there is no body to
// use at all.
func (p *puller) stream(ctx context.Context, relay string) (body []byte, readErr, err error) {
	cfg := &p.c.cfg
	v := p.c.filterValues()
	path := "/v1/stream?"
	if b := p.catchup; b != nil {
		path = "/v1/catchup?"
		v.Set("checkpoint", catchupAt(p.dec.after, *b).String())
	} else {
		v.Set("checkpoint", checkpoint.At(p.dec.after).String())
	}
	v.Set("maxBytes", strconv.Itoa(cfg.maxBytes))
	if p.catchup == nil {
		v.Set("wait", cfg.wait.String())
		v.Set("format", "binary")
	}
	if cfg.name != "" {
		v.Set("client", cfg.name)
	}
	// The request may take its long-poll wait plus the request timeout to
	// answer; then its body may take as long as it needs while it flows (a
	// single window can be far larger than maxBytes), but no more than the
	// request timeout without a byte.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stalled := fmt.Errorf("databus: relay %s: nothing received for the request timeout (%v, beyond the long-poll wait)", relay, cfg.reqTimeout)
	timer := time.AfterFunc(cfg.wait+cfg.reqTimeout, func() { cancel(stalled) })
	defer timer.Stop()
	resp, err := p.get(ctx, relay, path+v.Encode())
	if err != nil {
		if context.Cause(ctx) == stalled {
			err = stalled
		}
		return nil, nil, err
	}
	defer resp.Body.Close()
	p.c.stats.requests.Add(1)
	if s := resp.Header.Get("X-Databus-Max-Scn"); s != "" && p.catchup == nil {
		if scn, err := strconv.ParseUint(s, 10, 64); err == nil {
			p.c.stats.relayMaxSCN.Store(scn)
		}
	}
	timer.Reset(cfg.reqTimeout)
	body, readErr = readBody(resp, func() { timer.Reset(cfg.reqTimeout) })
	if readErr != nil && context.Cause(ctx) == stalled {
		readErr = stalled
	}
	p.c.stats.bytes.Add(uint64(len(body)))
	if len(body) > 0 {
		if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != framesType {
			return nil, nil, fmt.Errorf("%w: relay %s answered Content-Type %q, want %s", ErrProtocol, relay, mt, framesType)
		}
	}
	return body, readErr, nil
}

// readBody reads a whole response body into a buffer of its own: windows
// alias it, and it is never reused. There is no size limit: a response
// holds at least one whole window, whatever its size. progress is called
// after every read that returned bytes.
func readBody(resp *http.Response, progress func()) ([]byte, error) {
	n := resp.ContentLength
	if n < 0 || n > event.MaxFrameSize {
		n = 64 << 10
	}
	buf := make([]byte, 0, n+1) // +1: reaching EOF needs no growth
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		m, err := resp.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if m > 0 {
			progress()
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// get issues a GET of path on relay and turns every status but 200 into
// an error.
func (p *puller) get(ctx context.Context, relay, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, relay+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer drainClose(resp.Body)
		return nil, p.statusError(relay, resp)
	}
	return resp, nil
}

// drainClose reads what is left of a small body before closing it, so that
// the connection goes back to the keep-alive pool.
func drainClose(body io.ReadCloser) {
	io.Copy(io.Discard, io.LimitReader(body, 64<<10))
	body.Close()
}

// statusError turns a relay's error response into the error the retry
// policy (classify) acts on.
func (p *puller) statusError(relay string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var body struct {
		Error struct {
			Code         string `json:"code"`
			Message      string `json:"message"`
			Parameter    string `json:"parameter"`
			OldestSCN    uint64 `json:"oldestScn"`
			LowWatermark uint64 `json:"lowWatermark"`
		} `json:"error"`
	}
	jsonErr := json.Unmarshal(b, &body)
	e := body.Error
	st := resp.StatusCode
	switch {
	case st == http.StatusGone && e.Code == "scn_not_held":
		return &SCNNotHeldError{Relay: relay, Checkpoint: p.dec.after, OldestSCN: e.OldestSCN, LowWatermark: e.LowWatermark}
	case st >= 400 && st < 500 && st != http.StatusRequestTimeout && st != http.StatusTooManyRequests:
		re := &RelayError{Relay: relay, Status: st, Code: e.Code, Message: e.Message, Parameter: e.Parameter}
		if jsonErr != nil || e.Code == "" {
			re.Code, re.Message = "", snippet(b)
		}
		return re
	}
	return &statusError{relay: relay, status: st, body: snippet(b)}
}

func snippet(b []byte) string {
	const max = 200
	s := strings.TrimSpace(string(b))
	if len(s) > max {
		s = s[:max] + "..."
	}
	return s
}

// fetchSchemas adds every schema version the relay lists to the registry.
// Versions already registered are kept as they are: entries are immutable,
// and one registered from a schema-change frame encodes the same way.
func (p *puller) fetchSchemas(ctx context.Context, relay string) error {
	ctx, cancel := context.WithTimeout(ctx, p.c.cfg.reqTimeout)
	defer cancel()
	resp, err := p.get(ctx, relay, "/v1/schemas")
	if err != nil {
		return err
	}
	defer drainClose(resp.Body)
	var tables []schema.Table
	if err := json.NewDecoder(resp.Body).Decode(&tables); err != nil {
		return fmt.Errorf("%w: relay %s: /v1/schemas: %v", ErrProtocol, relay, err)
	}
	for _, t := range tables {
		if _, ok := p.c.reg.Get(t.ID, t.Version); ok {
			continue
		}
		if _, err := p.c.reg.Put(t); err != nil {
			p.c.cfg.logger.Warn("databus: ignoring a schema the relay lists", "relay", relay, "source", t.Name, "version", t.Version, "err", err)
		}
	}
	return nil
}
