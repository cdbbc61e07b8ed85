package lease

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"
)

// Defaults of [Options]. With them an instance that dies without releasing
// its leases has them taken within LeaseDuration + RenewInterval (13.3 s):
// others notice its last renewal at most RenewInterval/2 after it, call it
// expired LeaseDuration later, and take the lease at their next sync, at most
// RenewInterval/2 after that.
const (
	DefaultLeaseDuration  = 10 * time.Second
	DefaultHandoffTimeout = 40 * time.Second
)

// Options configure a [Manager].
type Options struct {
	// Owner identifies this instance in the table. Default: DefaultOwner().
	Owner string
	// LeaseDuration is how long a lease may go unrenewed before others take
	// it. Default: 10s.
	LeaseDuration time.Duration
	// RenewInterval is how often a held lease is renewed. Sync must be
	// called every RenewInterval/2 (the stores' LeaseSyncInterval).
	// Default: LeaseDuration/3. Must be at most LeaseDuration/2.
	RenewInterval time.Duration
	// HandoffTimeout bounds how long an owner keeps renewing a lease it was
	// asked to hand over, waiting for its source to checkpoint and release
	// it; after that the lease expires like any other. It should be at least
	// the source's own HandoffTimeout (30s by default). Default: 40s.
	HandoffTimeout time.Duration
	// Logger receives lease changes (Info) and retried failures (Warn).
	// Default: nil, which discards them.
	Logger *slog.Logger
}

// Resolve fills in defaults and checks o. It returns the name of the field at
// fault and why, or "", "" when o is good.
func (o *Options) Resolve() (field, reason string) {
	switch {
	case o.LeaseDuration < 0:
		return "LeaseDuration", "negative"
	case o.RenewInterval < 0:
		return "RenewInterval", "negative"
	case o.HandoffTimeout < 0:
		return "HandoffTimeout", "negative"
	}
	if o.Owner == "" {
		o.Owner = DefaultOwner()
	}
	if o.LeaseDuration == 0 {
		o.LeaseDuration = DefaultLeaseDuration
	}
	if o.RenewInterval == 0 {
		o.RenewInterval = o.LeaseDuration / 3
	}
	if o.HandoffTimeout == 0 {
		o.HandoffTimeout = DefaultHandoffTimeout
	}
	if o.RenewInterval > o.LeaseDuration/2 {
		return "RenewInterval", fmt.Sprintf("%v is more than half of LeaseDuration %v: a lease must be renewed at least twice per duration", o.RenewInterval, o.LeaseDuration)
	}
	if o.RenewInterval < 2*time.Millisecond {
		return "RenewInterval", "shorter than 2ms"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return "", ""
}

// DefaultOwner returns an owner id unique to this process: host name, process
// id and 32 random bits, like "web-3-4711-9f2c01ab".
func DefaultOwner() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "host"
	}
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never returns an error
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}
