package mysql

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/databus-go/databus/source"
)

// posData is the adapter's part of a source.Position: the binlog
// coordinates just after a window (where a run resumes) and the GTID of the
// transaction that ended there.
type posData struct {
	File string `json:"file"`
	Pos  uint32 `json:"pos"`
	GTID string `json:"gtid,omitempty"`
}

// makeSCN composes an SCN from a binlog file number and an offset in it.
// Binlog files are below 4 GiB (max_binlog_size is at most 1 GiB), so the
// offset fits the low 32 bits and SCNs order as (file, offset) do.
func makeSCN(fileNum, pos uint32) uint64 { return uint64(fileNum)<<32 | uint64(pos) }

// fileNumber is the numeric suffix of a binlog file name ("binlog.000042"
// is 42).
func fileNumber(name string) (uint32, error) {
	i := strings.LastIndexByte(name, '.')
	if i < 0 || i == len(name)-1 {
		return 0, fmt.Errorf("%w: binlog file name %q has no numeric suffix", ErrDecode, name)
	}
	n, err := strconv.ParseUint(name[i+1:], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%w: binlog file name %q has no numeric suffix", ErrDecode, name)
	}
	return uint32(n), nil
}

// withNumber returns the binlog file name with base's prefix and number n,
// keeping base's zero padding.
func withNumber(base string, n uint32) string {
	i := strings.LastIndexByte(base, '.')
	if i < 0 {
		return base
	}
	width := len(base) - i - 1
	return fmt.Sprintf("%s.%0*d", base[:i], width, n)
}

// position builds the source.Position of a window.
func (p posData) position(scn uint64) source.Position {
	// By hand: it runs once per window. Same output as json.Marshal(p).
	b := make([]byte, 0, 64+len(p.File)+len(p.GTID))
	b = append(b, `{"file":`...)
	b = appendJSONString(b, p.File)
	b = append(b, `,"pos":`...)
	b = strconv.AppendUint(b, uint64(p.Pos), 10)
	if p.GTID != "" {
		b = append(b, `,"gtid":`...)
		b = appendJSONString(b, p.GTID)
	}
	b = append(b, '}')
	return source.Position{SCN: scn, Data: b}
}

// appendJSONString appends s as a JSON string. Binlog file names and
// GTIDs are ASCII; anything unusual goes through encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7F || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// decodePosition reads a source.Position's data. Data may be empty when the
// position carries only an SCN; ok is false then.
func decodePosition(p source.Position) (d posData, ok bool, err error) {
	if len(p.Data) == 0 || string(p.Data) == "null" {
		return posData{}, false, nil
	}
	if err := json.Unmarshal(p.Data, &d); err != nil {
		return posData{}, false, fmt.Errorf("databus: mysql: bad position data %s: %w", p.Data, err)
	}
	if d.File == "" || d.Pos < 4 {
		return posData{}, false, fmt.Errorf("databus: mysql: bad position data %s: file empty or offset below 4", p.Data)
	}
	n, err := fileNumber(d.File)
	if err != nil {
		return posData{}, false, err
	}
	if p.SCN != 0 && p.SCN != makeSCN(n, d.Pos) {
		return posData{}, false, fmt.Errorf("databus: mysql: position data %s does not match SCN %d (%s:%d)", p.Data, p.SCN, withNumber(d.File, uint32(p.SCN>>32)), uint32(p.SCN))
	}
	return d, true, nil
}
