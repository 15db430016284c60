package relay

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/relay/buffer"
	"github.com/databus-go/databus/source"
)

// Large windows.
//
// A window is held in memory when its frames take at most spillThreshold
// bytes (Buffer.MaxBytes/16); a larger one is written to a segment file,
// <StateDir>/spill/<scn>.win, holding exactly the frames a response sends
// (its end-of-window frame included), and the buffer holds the open file
// (buffer.Spill). A window a source emits in chunks (source.Window.Partial)
// is spooled as the chunks arrive, to <StateDir>/spill/chunks-*.tmp, with
// frames of SCN 0 (the commit is not known yet); at its final chunk the
// spooled frames are copied, stamped with the window's SCN and commit time,
// into memory or into the segment, followed by the final chunk's frames.
// The copy streams through fixed buffers: at no point is a spilled window
// in memory.
//
// Nothing in spill/ is durable, and nothing is synced: the source's log is
// the durable copy, and New empties the directory, since after a restart
// the source emits the windows again.

const (
	spillDirName = "spill"
	// maxSpilledWindows bounds the spilled windows held, each an open
	// file: the oldest windows are evicted past it.
	maxSpilledWindows = 1024
	// spillIOSize is the size of the reader and writer buffers of the
	// spool and segment files.
	spillIOSize = 256 << 10
)

// errSpill is wrapped by the errors of the spill files' I/O. They are
// retryable (the disk may have room again): the source is run again and
// emits the window again.
var errSpill = errors.New("databus: relay: spilling a large window to disk")

// resetSpillDir empties (or creates) the spill directory.
func resetSpillDir(stateDir string) (string, error) {
	dir := filepath.Join(stateDir, spillDirName)
	if err := os.RemoveAll(dir); err != nil {
		return "", fmt.Errorf("%w: removing the spilled windows of the last run: %v", ErrState, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("%w: %v", ErrState, err)
	}
	return dir, nil
}

// spool holds the chunks of a window still open at the source.
type spool struct {
	f      *os.File
	size   int64  // bytes of frames written
	events uint32 // data events among them
}

// spiller is the capture goroutine's spill state and buffers.
type spiller struct {
	dir       string
	threshold int64 // larger windows are spilled
	maxSpill  int64
	spool     *spool
	w         *bufio.Writer // of the spool while chunks arrive, then of a segment
	r         *bufio.Reader
	scratch   []byte // frames larger than w's buffer
}

func newSpiller(dir string, cfg *Config) *spiller {
	return &spiller{
		dir:       dir,
		threshold: int64(cfg.Buffer.MaxBytes) / 16,
		maxSpill:  int64(cfg.Buffer.MaxSpillBytes),
		w:         bufio.NewWriterSize(io.Discard, spillIOSize),
		r:         bufio.NewReaderSize(nil, spillIOSize),
	}
}

// addChunk appends the frames of a chunk's events (already checked: size
// bytes) to the spool, creating it on the first chunk. after is the SCN of
// the newest window captured, for the error when the window outgrows the
// spill bound.
func (s *spiller) addChunk(events []event.Event, size int64, count uint32, after uint64) error {
	if s.spool == nil {
		f, err := os.CreateTemp(s.dir, "chunks-*.tmp")
		if err != nil {
			return fmt.Errorf("%w: %v", errSpill, err)
		}
		s.spool = &spool{f: f}
		s.w.Reset(f)
	}
	if need := s.spool.size + size; need > s.maxSpill {
		return &buffer.WindowTooLargeError{After: after, Size: need, MaxBytes: s.maxSpill, Spill: true}
	}
	for i := range events {
		if err := s.writeFrame(&events[i]); err != nil {
			return fmt.Errorf("%w: %s: %w", errSpill, s.spool.f.Name(), err)
		}
	}
	s.spool.size += size
	s.spool.events += count
	return nil
}

// writeFrame encodes e into s.w: straight into its buffer when the frame
// fits it, else through scratch.
func (s *spiller) writeFrame(e *event.Event) error {
	n := e.Size()
	if n > s.w.Available() && n <= s.w.Size() {
		if err := s.w.Flush(); err != nil {
			return err
		}
	}
	if n <= s.w.Available() {
		b, err := event.AppendFrame(s.w.AvailableBuffer(), e)
		if err != nil {
			return err
		}
		_, err = s.w.Write(b)
		return err
	}
	b, err := event.AppendFrame(s.scratch[:0], e)
	if err != nil {
		return err
	}
	_, err = s.w.Write(b)
	if cap(b) <= 4*spillIOSize {
		s.scratch = b[:0] // keep a moderate one for the next large frame
	}
	return err
}

// discard drops the spool, if any: its window was abandoned, refused, or
// has been copied out.
func (s *spiller) discard() {
	if s.spool == nil {
		return
	}
	s.w.Reset(io.Discard)
	s.spool.f.Close()
	os.Remove(s.spool.f.Name())
	s.spool = nil
}

// spooled returns the size and data events of the spooled chunks.
func (s *spiller) spooled() (size int64, events uint32) {
	if s.spool == nil {
		return 0, 0
	}
	return s.spool.size, s.spool.events
}

// readSpool appends the spooled frames to data, stamped with scn and ts.
func (s *spiller) readSpool(data []byte, scn uint64, ts int64) ([]byte, error) {
	if err := s.w.Flush(); err != nil {
		return data, fmt.Errorf("%w: %v", errSpill, err)
	}
	start := len(data)
	data = data[:start+int(s.spool.size)]
	if _, err := s.spool.f.ReadAt(data[start:], 0); err != nil {
		return data[:start], fmt.Errorf("%w: reading back %s: %v", errSpill, s.spool.f.Name(), err)
	}
	for off := start; off < len(data); {
		n, err := event.FrameLen(data[off:])
		if err != nil || n > len(data)-off {
			return data[:start], fmt.Errorf("%w: %s: unreadable frame at offset %d: %v", errSpill, s.spool.f.Name(), off-start, err)
		}
		restamp(data[off:], scn, ts)
		off += n
	}
	return data, nil
}

// writeSegment writes window w's segment file: the spooled frames stamped
// with its SCN and timestamp, the frames of w.Events, then eow. size is the
// total it must come to.
func (s *spiller) writeSegment(w *source.Window, eow *event.Event, size int64) (sp *buffer.Spill, err error) {
	path := filepath.Join(s.dir, strconv.FormatUint(w.SCN, 10)+".win")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errSpill, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
			err = fmt.Errorf("%w: %s: %w", errSpill, path, err)
		}
	}()
	if s.spool != nil {
		if err := s.w.Flush(); err != nil {
			return nil, err
		}
		s.r.Reset(io.NewSectionReader(s.spool.f, 0, s.spool.size))
		s.w.Reset(f)
		if err := copyRestamped(s.w, s.r, w.SCN, w.Timestamp); err != nil {
			return nil, err
		}
		s.r.Reset(nil)
	} else {
		s.w.Reset(f)
	}
	for i := range w.Events {
		if err := s.writeFrame(&w.Events[i]); err != nil {
			return nil, err
		}
	}
	if err := s.writeFrame(eow); err != nil {
		return nil, err
	}
	if err := s.w.Flush(); err != nil {
		return nil, err
	}
	s.w.Reset(io.Discard)
	if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if fi.Size() != size {
		return nil, fmt.Errorf("wrote %d bytes, want %d", fi.Size(), size)
	}
	return buffer.NewSpill(f, path, size), nil
}

// copyRestamped copies frames from r to w, stamping each with scn and ts.
// Only headers pass through memory one at a time; bodies are copied as
// they are (their checksum does not cover the header).
func copyRestamped(w io.Writer, r io.Reader, scn uint64, ts int64) error {
	var h [event.HeaderSize]byte
	for {
		if _, err := io.ReadFull(r, h[:]); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
		n, err := event.FrameLen(h[:])
		if err != nil {
			return err
		}
		restamp(h[:], scn, ts)
		if _, err := w.Write(h[:]); err != nil {
			return err
		}
		if _, err := io.CopyN(w, r, int64(n-event.HeaderSize)); err != nil {
			return err
		}
	}
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// restamp sets the SCN and timestamp of the frame whose header starts h,
// and its header checksum (frame layout: package event).
func restamp(h []byte, scn uint64, ts int64) {
	binary.BigEndian.PutUint64(h[8:], scn)
	binary.BigEndian.PutUint64(h[16:], uint64(ts))
	binary.BigEndian.PutUint32(h[44:], crc32.Checksum(h[:44], castagnoli))
}
