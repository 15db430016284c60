package postgres

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/databus-go/databus/source"
)

// emitError carries emit's error out of a session: Run returns it as is,
// without retrying.
type emitError struct{ err error }

func (e *emitError) Error() string { return e.err.Error() }
func (e *emitError) Unwrap() error { return e.err }

// capture is the state of one Run.
type capture struct {
	s   *Source
	cfg Config
	cat *catalog
	dec *decoder
	// emit is Run's emit, wrapped: its errors become *emitError, and the
	// windows it takes are counted in the stats.
	emit func(*source.Window) error

	version int
	proto   int
	replCfg *pgconn.Config
}

// Run streams the slot from `from` (the zero Position: the slot's
// confirmed_flush_lsn) and calls emit for every window, in SCN order. It
// reconnects after connection failures and server restarts, resuming after
// the last window emitted; it returns ctx's error, emit's error, or an
// error it cannot recover from (see retryable).
func (s *Source) Run(ctx context.Context, from source.Position, emit func(context.Context, *source.Window) error) error {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return ErrClosed
	case !s.opened:
		s.mu.Unlock()
		return ErrNotOpen
	case s.running:
		s.mu.Unlock()
		return errors.New("databus: postgres: Run is already running")
	}
	s.running = true
	c := &capture{s: s, cfg: s.cfg, cat: s.cat, version: s.version, proto: s.proto, replCfg: s.replCfg}
	store, hbCfg := s.store, s.hbCfg
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
	}()
	c.emit = func(w *source.Window) error {
		if w.Partial {
			s.storeHeld(c.dec) // the peak: a chunk's worth
		}
		if err := emit(ctx, w); err != nil {
			return &emitError{err}
		}
		if w.Partial {
			s.stats.chunks.Add(1)
			return nil
		}
		now := time.Now().UnixNano()
		s.stats.lastSCN.Store(w.SCN)
		s.stats.lastWindow.Store(now)
		if len(w.Events) == 0 {
			s.stats.lastHeartbeat.Store(now)
		}
		return nil
	}
	c.dec = newDecoder(store, &resolver{cat: c.cat, store: store}, s.cfg.Tables, c.proto, from.SCN,
		newSpiller(spillPath(s.cfg.StateDir)), s.cfg.ChunkBytes, s.cfg.ChunkEvents)
	defer func() {
		c.dec.close()
		c.s.storeHeld(c.dec)
	}()
	now := time.Now().UnixNano()
	s.stats.lastWindow.Store(now)
	s.stats.started.Store(now)

	hbCtx, stopHB := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.heartbeats(hbCtx, hbCfg) })
	defer func() {
		stopHB()
		wg.Wait()
	}()

	backoff := s.cfg.MinBackoff
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			s.stats.reconnects.Add(1)
		}
		before := c.dec.last
		err := c.session(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var ee *emitError
		if errors.As(err, &ee) {
			return ee.err
		}
		if !retryable(err) {
			s.log.Error("capture stopped", "err", err)
			return err
		}
		if c.dec.last > before {
			backoff = s.cfg.MinBackoff
		}
		s.log.Warn("replication session failed; reconnecting", "err", err, "resumeAt", lsnString(c.dec.last), "backoff", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, s.cfg.MaxBackoff)
	}
}

// session runs one replication connection until it fails.
func (c *capture) session(ctx context.Context) error {
	s := c.s
	// The slot must still hold everything after the resume position.
	conn, err := c.cat.get(ctx)
	if err != nil {
		return err
	}
	info, ok, err := readSlot(ctx, conn, c.cfg.Slot, c.version)
	if err != nil {
		return c.cat.check(err)
	}
	if !ok {
		return &SlotLostError{Slot: c.cfg.Slot, Reason: "dropped", SCN: c.dec.last}
	}
	if err := info.check(c.cfg.Slot, c.dec.last); err != nil {
		return err
	}
	// The floor of every confirmation: confirming less than the slot
	// already has would be ignored or, worse, move it back.
	floor := info.confirmed

	repl, err := pgconn.ConnectConfig(ctx, c.replCfg)
	if err != nil {
		return fmt.Errorf("databus: postgres: replication connection: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = repl.Close(cctx)
	}()
	args := []string{"proto_version '" + strconv.Itoa(c.proto) + "'",
		"publication_names '" + quotePublication(c.cfg.Publication) + "'"}
	if c.proto >= 2 {
		args = append(args, "streaming 'on'", "messages 'true'")
	}
	start := c.dec.last
	if err := pglogrepl.StartReplication(ctx, repl, pgx.Identifier{c.cfg.Slot}.Sanitize(), pglogrepl.LSN(start),
		pglogrepl.StartReplicationOptions{Mode: pglogrepl.LogicalReplication, PluginArgs: args}); err != nil {
		return c.startError(err)
	}
	err = c.dec.reset(c.emit)
	s.storeHeld(c.dec)
	if err != nil {
		return err
	}
	s.stats.streaming.Store(true)
	defer s.stats.streaming.Store(false)
	s.log.Info("replication started", "from", lsnString(start), "protocol", c.proto)

	// The loop blocks in ReceiveMessage until a read deadline: the next
	// status update, or now when woken (ctx done, or a Release to confirm).
	netConn := repl.Conn()
	var dl struct {
		sync.Mutex
		woken    bool
		deadline time.Time
	}
	wake := func() {
		dl.Lock()
		dl.woken = true
		dl.deadline = time.Time{}
		_ = netConn.SetReadDeadline(time.Now())
		dl.Unlock()
	}
	stop := context.AfterFunc(ctx, wake)
	defer stop()
	s.mu.Lock()
	s.wake = wake
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.wake = nil
		s.mu.Unlock()
	}()

	var received, sentFlush uint64
	var storm pingStorm
	status := func() error {
		// Never beyond what this run emitted (or was told to start after):
		// a release of anything else would be the relay's mistake.
		flush := max(min(s.released.Load(), c.dec.last), floor)
		write := max(received, flush)
		if err := sendStatus(repl, write, flush); err != nil {
			return fmt.Errorf("databus: postgres: standby status update: %w", err)
		}
		sentFlush = flush
		return nil
	}
	if err := status(); err != nil {
		return err
	}
	nextStatus := time.Now().Add(c.cfg.StatusInterval)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if now := time.Now(); !now.Before(nextStatus) || min(s.released.Load(), c.dec.last) > sentFlush {
			if err := status(); err != nil {
				return err
			}
			nextStatus = now.Add(c.cfg.StatusInterval)
		}
		dl.Lock()
		if dl.woken {
			dl.woken = false
			dl.Unlock()
			continue
		}
		if !dl.deadline.Equal(nextStatus) {
			_ = netConn.SetReadDeadline(nextStatus)
			dl.deadline = nextStatus
		}
		dl.Unlock()

		msg, err := repl.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("databus: postgres: replication stream: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				continue
			}
			switch msg.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("%w: keepalive: %v", ErrDecode, err)
				}
				received = max(received, uint64(ka.ServerWALEnd))
				if ka.ReplyRequested {
					if err := status(); err != nil {
						return err
					}
					now := time.Now()
					nextStatus = now.Add(c.cfg.StatusInterval)
					if storm.waiting(now, sentFlush, uint64(ka.ServerWALEnd)) {
						return errServerWaits
					}
				}
			case pglogrepl.XLogDataByteID:
				xld, err := pglogrepl.ParseXLogData(msg.Data[1:])
				if err != nil {
					return fmt.Errorf("%w: XLogData: %v", ErrDecode, err)
				}
				received = max(received, uint64(xld.ServerWALEnd))
				err = c.dec.handle(ctx, xld.WALData, c.emit)
				s.storeHeld(c.dec)
				if err != nil {
					return err
				}
			}
		case *pgproto3.ErrorResponse:
			return c.startError(pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("databus: postgres: the server ended the replication stream")
		}
	}
}

// storeHeld publishes the decoder's open transactions in the stats.
func (s *Source) storeHeld(d *decoder) {
	held, spilled := d.held()
	s.stats.held.Store(held)
	s.stats.spilled.Store(spilled)
	s.stats.open.Store(int64(d.open()))
}

// errServerWaits ends a session whose server asks again and again for a
// confirmation of WAL the relay has not released: a server shutting down
// waits for its walsenders' clients to confirm everything sent, which the
// adapter must never do. Disconnecting lets the shutdown proceed; the
// session starts again (after the restart) from the last window.
var errServerWaits = errors.New("databus: postgres: the server keeps asking to confirm WAL the relay has not released (it is shutting down); disconnecting")

// pingStorm recognises a server that waits for a confirmation: keepalives
// requesting a reply, each answered at once, arriving back to back (at
// least pingStormCount within pingStormWindow) while the confirmed
// position stays below the server's. In normal operation the server asks
// for a reply once per wal_sender_timeout/2 at most.
type pingStorm struct {
	start time.Time
	count int
}

const (
	pingStormCount  = 5
	pingStormWindow = 100 * time.Millisecond
)

func (p *pingStorm) waiting(now time.Time, flush, serverEnd uint64) bool {
	if flush >= serverEnd {
		p.count = 0
		return false
	}
	if p.count == 0 || now.Sub(p.start) > pingStormWindow {
		p.start, p.count = now, 0
	}
	p.count++
	return p.count >= pingStormCount
}

// startError turns the server's refusals to stream the slot into clear
// errors.
func (c *capture) startError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case sqlUndefinedObject:
			if containsFold(pgErr.Message, "replication slot") {
				return &SlotLostError{Slot: c.cfg.Slot, Reason: "dropped", SCN: c.dec.last, Cause: err}
			}
		case sqlPrerequisiteState:
			if containsFold(pgErr.Message, "can no longer get changes") || containsFold(pgErr.Detail, "invalidated") {
				return &SlotLostError{Slot: c.cfg.Slot, Reason: "invalidated", SCN: c.dec.last, Cause: err}
			}
		}
	}
	return fmt.Errorf("databus: postgres: replication: %w", err)
}

func containsFold(s, sub string) bool {
	return len(s) >= len(sub) && (indexFold(s, sub) >= 0)
}

func indexFold(s, sub string) int {
	for i := 0; i+len(sub) <= len(s); i++ {
		match := true
		for j := 0; j < len(sub); j++ {
			a, b := s[i+j], sub[j]
			if 'A' <= a && a <= 'Z' {
				a += 'a' - 'A'
			}
			if 'A' <= b && b <= 'Z' {
				b += 'a' - 'A'
			}
			if a != b {
				match = false
				break
			}
		}
		if match {
			return i
		}
	}
	return -1
}

// quotePublication quotes a publication name for publication_names, a
// list of identifiers inside a string literal.
func quotePublication(name string) string {
	q := pgx.Identifier{name}.Sanitize()
	out := make([]byte, 0, len(q))
	for i := 0; i < len(q); i++ {
		if q[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, q[i])
	}
	return string(out)
}

// sendStatus sends a standby status update. Unlike
// pglogrepl.SendStandbyStatusUpdate it never replaces a flush position by
// the write position: the flush position is the slot's confirmation and
// must only ever be a released one.
func sendStatus(conn *pgconn.PgConn, write, flush uint64) error {
	data := make([]byte, 0, 34)
	data = append(data, pglogrepl.StandbyStatusUpdateByteID)
	data = binary.BigEndian.AppendUint64(data, write)
	data = binary.BigEndian.AppendUint64(data, flush)
	data = binary.BigEndian.AppendUint64(data, flush) // apply
	// Microseconds since 2000-01-01.
	data = binary.BigEndian.AppendUint64(data, uint64(time.Now().UnixMicro()-946_684_800_000_000))
	data = append(data, 0) // no reply requested
	buf, err := (&pgproto3.CopyData{Data: data}).Encode(nil)
	if err != nil {
		return err
	}
	return conn.Frontend().SendUnbufferedEncodedCopyData(buf)
}

// heartbeats writes a heartbeat message into the WAL whenever no window was
// emitted for a heartbeat interval while a session streams, and refreshes
// the slot statistics, until ctx is done. Failures are logged and retried
// at the next tick: heartbeats are an aid, not a duty.
func (s *Source) heartbeats(ctx context.Context, cfg *pgx.ConnConfig) {
	interval := s.cfg.HeartbeatInterval
	t := time.NewTicker(interval)
	defer t.Stop()
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			closeQuietly(conn)
		}
	}()
	s.mu.Lock()
	version := s.version
	proto := s.proto
	s.mu.Unlock()
	// pg_logical_emit_message does not flush the WAL before PostgreSQL 17
	// (its flush argument): txid_current() makes the statement commit a
	// transaction id, whose commit flushes the message with it.
	emit := `SELECT pg_catalog.pg_logical_emit_message(false, 'databus', 'heartbeat ' || floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text), pg_catalog.txid_current()`
	if version >= 170000 {
		emit = `SELECT pg_catalog.pg_logical_emit_message(false, 'databus', 'heartbeat ' || floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text, true)`
	}
	warned := time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil || conn.IsClosed() {
			var err error
			if conn, err = pgx.ConnectConfig(ctx, cfg); err != nil {
				conn = nil
				s.log.Debug("heartbeat connection", "err", err)
				continue
			}
		}
		idle := time.Since(time.Unix(0, s.stats.lastWindow.Load())) >= interval
		if idle && proto >= 2 && s.stats.streaming.Load() {
			if _, err := conn.Exec(ctx, emit); err != nil && ctx.Err() == nil {
				if time.Since(warned) > time.Minute {
					warned = time.Now()
					s.log.Warn("heartbeat message failed (the role needs EXECUTE on pg_logical_emit_message)", "err", err)
				}
				if conn.IsClosed() {
					conn = nil
				}
				continue
			}
		}
		var server, confirmed *string
		var walStatus string
		ws := "''"
		if version >= 130000 {
			ws = "coalesce(wal_status, '')"
		}
		err := conn.QueryRow(ctx, `SELECT pg_catalog.pg_current_wal_lsn()::text, confirmed_flush_lsn::text, `+ws+`
			FROM pg_catalog.pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot).Scan(&server, &confirmed, &walStatus)
		if err != nil {
			if conn.IsClosed() {
				conn = nil
			}
			continue
		}
		if server != nil {
			if l, err := pglogrepl.ParseLSN(*server); err == nil {
				s.stats.serverLSN.Store(uint64(l))
			}
		}
		if confirmed != nil {
			if l, err := pglogrepl.ParseLSN(*confirmed); err == nil {
				s.stats.slotConfirmed.Store(uint64(l))
			}
		}
		s.stats.walStatus.Store(walStatus)
	}
}
