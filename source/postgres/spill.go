package postgres

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/databus-go/databus/event"
)

// Spilled streamed transactions.
//
// A streamed transaction (pgoutput v2 'streaming') arrives in blocks, Stream
// Start .. Stream Stop, interleaved with the blocks of other streamed
// transactions and with whole transactions, and is decided only by its
// Stream Commit or Stream Abort. Its decoded events cannot go to the relay
// before then (windows are in commit order), and holding them in memory
// would make the adapter's memory grow with the transaction. Each one's
// events therefore go, as they are decoded, to a file of its own in
// <StateDir>/postgres-spill, through one shared write buffer; at Stream
// Commit the file is read back, in order, into chunks of bounded size.
//
// The file (format version 1; temporary, never read by another process or
// after a restart, but checked all the same):
//
//	offset  size  field
//	0       7     magic "DBPGSPL"
//	7       1     format version (1)
//	8       ...   records, each:
//	                4  subtransaction id (xid of the change), big-endian
//	                n  the event as a frame of package event (SCN 0,
//	                   timestamp 0; its own length and checksums)
//
// A subtransaction's abort (ROLLBACK TO SAVEPOINT after its rows were
// streamed) does not rewrite the file: its id joins the file's aborted set,
// and the replay skips its records. The set is bounded: past
// maxAbortedSubxacts ids the file is compacted (copied without the aborted
// records) and the set emptied.

const (
	spillDirName = "postgres-spill"
	spillMagic   = "DBPGSPL"
	spillVersion = 1
	spillHdrSize = len(spillMagic) + 1
	// spillIOSize is the size of the write buffer shared by every spill
	// file and of the read buffer of a replay.
	spillIOSize = 64 << 10
	// recordHeader is the fixed part of a record: the subtransaction id
	// and the frame header.
	recordHeader = 4 + event.HeaderSize
	// maxAbortedSubxacts bounds the aborted subtransaction ids remembered
	// per file before it is compacted.
	maxAbortedSubxacts = 16384
)

// errSpill is wrapped by the errors of the spill files' I/O. They are
// retryable: the session starts again and the server streams the
// transactions again (the disk may have room by then).
var errSpill = errors.New("databus: postgres: spilling a streamed transaction to disk")

// spillFile is one streamed transaction's events on disk.
type spillFile struct {
	xid  uint32
	f    *os.File
	size int64 // bytes written, the shared buffer's included
	// events counts the records written (aborted ones included).
	events int64
	// aborted holds the ids of the subtransactions rolled back since the
	// last compaction: their records are skipped.
	aborted map[uint32]struct{}
}

// spiller writes and replays spill files. It is part of the decoder and,
// like it, used by one goroutine.
type spiller struct {
	dir        string
	maxAborted int

	w  *bufio.Writer
	wf *spillFile // the file w writes to; nil when w holds nothing
	r  *bufio.Reader

	rec []byte // record scratch
	hdr [recordHeader]byte
}

func newSpiller(dir string) *spiller {
	return &spiller{
		dir:        dir,
		maxAborted: maxAbortedSubxacts,
		w:          bufio.NewWriterSize(io.Discard, spillIOSize),
		r:          bufio.NewReaderSize(nil, spillIOSize),
	}
}

// resetSpillDir empties (or creates) the spill directory: the files of a
// run that ended without cleaning up (a crash) are of no use.
func resetSpillDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("%w: removing the spill files of an earlier run: %v", errSpill, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: %w", errSpill, err)
	}
	return nil
}

// write appends e, an event of subtransaction subxid of transaction xid, to
// *sf, creating the file on the first event.
func (s *spiller) write(sf **spillFile, xid, subxid uint32, e *event.Event) error {
	if *sf == nil {
		f, err := s.create(xid)
		if err != nil {
			return err
		}
		*sf = &spillFile{xid: xid, f: f}
		if err := s.bind(*sf); err != nil {
			return err
		}
		s.w.WriteString(spillMagic)
		s.w.WriteByte(spillVersion)
		(*sf).size = int64(spillHdrSize)
	} else if err := s.bind(*sf); err != nil {
		return err
	}
	rec := binary.BigEndian.AppendUint32(s.rec[:0], subxid)
	rec, err := event.AppendFrame(rec, e)
	if err != nil {
		return decodeErr("a row of transaction %d: %v", xid, err)
	}
	s.rec = rec
	if len(rec) > spillIOSize {
		// A large row: straight to the file, without growing the scratch
		// for good.
		s.rec = nil
	}
	if _, err := s.w.Write(rec); err != nil {
		return fmt.Errorf("%w: %s: %w", errSpill, (*sf).f.Name(), err)
	}
	(*sf).size += int64(len(rec))
	(*sf).events++
	return nil
}

// create creates a spill file for transaction xid.
func (s *spiller) create(xid uint32) (*os.File, error) {
	f, err := os.CreateTemp(s.dir, "xid-"+strconv.FormatUint(uint64(xid), 10)+"-*.spill")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errSpill, err)
	}
	return f, nil
}

// bind makes the shared buffer write to sf, flushing what it held for
// another file.
func (s *spiller) bind(sf *spillFile) error {
	if s.wf == sf {
		return nil
	}
	if err := s.flush(); err != nil {
		return err
	}
	s.w.Reset(sf.f)
	s.wf = sf
	return nil
}

// flush writes the shared buffer to its file.
func (s *spiller) flush() error {
	if s.wf == nil {
		return nil
	}
	wf := s.wf
	s.wf = nil
	if err := s.w.Flush(); err != nil {
		s.w.Reset(io.Discard)
		return fmt.Errorf("%w: %s: %w", errSpill, wf.f.Name(), err)
	}
	s.w.Reset(io.Discard)
	return nil
}

// remove deletes sf (nil: nothing), dropping what the buffer holds for it.
func (s *spiller) remove(sf *spillFile) {
	if sf == nil {
		return
	}
	if s.wf == sf {
		s.w.Reset(io.Discard)
		s.wf = nil
	}
	name := sf.f.Name()
	_ = sf.f.Close()
	_ = os.Remove(name)
}

// abort drops subtransaction subxid's records from sf.
func (s *spiller) abort(sf *spillFile, subxid uint32) error {
	if sf.aborted == nil {
		sf.aborted = map[uint32]struct{}{}
	}
	sf.aborted[subxid] = struct{}{}
	if len(sf.aborted) <= s.maxAborted {
		return nil
	}
	return s.compact(sf)
}

// compact rewrites sf without its aborted records and forgets them.
func (s *spiller) compact(sf *spillFile) error {
	if err := s.flush(); err != nil {
		return err
	}
	f, err := s.create(sf.xid)
	if err != nil {
		return err
	}
	nf := &spillFile{xid: sf.xid, f: f, size: int64(spillHdrSize)}
	fail := func(err error) error {
		s.remove(nf)
		return err
	}
	w := bufio.NewWriterSize(f, spillIOSize)
	w.WriteString(spillMagic)
	w.WriteByte(spillVersion)
	var buf []byte
	err = s.records(sf, func(subxid uint32, n int) error {
		if cap(buf) < recordHeader+n {
			buf = make([]byte, recordHeader+n)
		}
		b := buf[:recordHeader+n]
		copy(b, s.hdr[:])
		if _, err := io.ReadFull(s.r, b[recordHeader:]); err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		nf.size += int64(len(b))
		nf.events++
		return nil
	})
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		return fail(fmt.Errorf("%w: compacting %s: %w", errSpill, sf.f.Name(), err))
	}
	old := sf.f
	*sf = *nf
	_ = old.Close()
	_ = os.Remove(old.Name())
	return nil
}

// records reads sf from its start and calls fn for each record of a
// subtransaction not aborted, with the record's header in s.hdr and its
// frame's remaining n-event.HeaderSize bytes next in s.r, which fn must
// consume. It skips aborted records itself.
func (s *spiller) records(sf *spillFile, fn func(subxid uint32, rest int) error) error {
	if err := s.flush(); err != nil {
		return err
	}
	s.r.Reset(io.NewSectionReader(sf.f, 0, sf.size))
	defer s.r.Reset(nil)
	var magic [spillHdrSize]byte
	if _, err := io.ReadFull(s.r, magic[:]); err != nil {
		return fmt.Errorf("%w: %s: %w", errSpill, sf.f.Name(), err)
	}
	if string(magic[:len(spillMagic)]) != spillMagic || magic[len(spillMagic)] != spillVersion {
		return fmt.Errorf("%w: %s is not a spill file of format %d", errSpill, sf.f.Name(), spillVersion)
	}
	for {
		if _, err := io.ReadFull(s.r, s.hdr[:]); err != nil {
			if err == io.EOF {
				return nil
			}
			return fmt.Errorf("%w: %s: %w", errSpill, sf.f.Name(), err)
		}
		n, err := event.FrameLen(s.hdr[4:])
		if err != nil {
			return fmt.Errorf("%w: %s: %w", errSpill, sf.f.Name(), err)
		}
		subxid := binary.BigEndian.Uint32(s.hdr[:4])
		rest := n - event.HeaderSize
		if _, gone := sf.aborted[subxid]; gone {
			if _, err := s.r.Discard(rest); err != nil {
				return fmt.Errorf("%w: %s: %w", errSpill, sf.f.Name(), err)
			}
			continue
		}
		if err := fn(subxid, rest); err != nil {
			return err
		}
	}
}

// replay reads the events of sf that were not rolled back, in order, and
// calls fn with each; the event's byte slices are carved from a. Before
// each, it calls next, which may reset a.
func (s *spiller) replay(sf *spillFile, a *arena, next func() error, fn func(e event.Event) error) error {
	return s.records(sf, func(_ uint32, rest int) error {
		if err := next(); err != nil {
			return err
		}
		b := a.alloc(event.HeaderSize + rest)
		copy(b, s.hdr[4:])
		if _, err := io.ReadFull(s.r, b[event.HeaderSize:]); err != nil {
			return fmt.Errorf("%w: %s: %w", errSpill, sf.f.Name(), err)
		}
		e, _, err := event.Decode(b)
		if err != nil {
			return fmt.Errorf("%w: %s: %w", errSpill, sf.f.Name(), err)
		}
		// The decoder never makes empty non-nil slices: keep it so.
		if len(e.Key) == 0 {
			e.Key = nil
		}
		if len(e.Payload) == 0 {
			e.Payload = nil
		}
		if len(e.Before) == 0 {
			e.Before = nil
		}
		return fn(e)
	})
}

// spillPath is the spill directory of a state directory.
func spillPath(stateDir string) string { return filepath.Join(stateDir, spillDirName) }
