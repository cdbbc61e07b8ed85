package awstest

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"
)

// maxNameLen is the longest Kinesis stream name; DynamoDB allows 255 and needs at least 3.
const maxNameLen = 128

// UniqueName returns a name that is valid for both Kinesis streams and DynamoDB tables
// (letters, digits, '_', '.', '-'; at most 128 bytes) and unique across tests, packages
// and runs sharing one emulator: prefix and the test name (invalid characters replaced
// by '_', truncated if long) followed by 64 random bits, e.g.
// "stream-TestRead_two_shards-1f2e3d4c5b6a7980".
func UniqueName(t testing.TB, prefix string) string {
	t.Helper()
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error
	suffix := "-" + hex.EncodeToString(b[:])
	base := sanitizeName(prefix + "-" + t.Name())
	if len(base) > maxNameLen-len(suffix) {
		base = base[:maxNameLen-len(suffix)]
	}
	return base + suffix
}

func sanitizeName(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '.', r == '-':
			return r
		}
		return '_'
	}, s)
}
