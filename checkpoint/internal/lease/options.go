package lease

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/shardflow/shardflow"
	"github.com/shardflow/shardflow/checkpoint"
)

// Defaults of [checkpoint.LeaseOptions], as its field docs state them.
const (
	DefaultLeaseDuration  = 8 * time.Second
	DefaultHandoffTimeout = 40 * time.Second
)

// Options configure a [Manager].
type Options struct {
	// Owner identifies this instance in the table. Default: DefaultOwner().
	Owner string
	// The lease timings, as the stores' users give them.
	checkpoint.LeaseOptions
	// Logger receives lease changes (Info) and retried failures (Warn). The
	// store scopes it. Default: slog.Default(); [Manager.SetLogger]
	// replaces it.
	Logger *slog.Logger
	// MeterProvider records the lease metrics (see the package
	// documentation). Default: nil, the global provider;
	// [Manager.SetMeterProvider] replaces it.
	MeterProvider metric.MeterProvider
}

// Resolve fills in the defaults of o's lease timings and checks them. field
// prefixes the field named by the *shardflow.ConfigError of a bad value, as
// in "Options" for "Options.RenewInterval".
func Resolve(o *checkpoint.LeaseOptions, field string) error {
	bad := func(name, reason string) error {
		return &shardflow.ConfigError{Field: field + "." + name, Reason: reason}
	}
	switch {
	case o.LeaseDuration < 0:
		return bad("LeaseDuration", "negative")
	case o.RenewInterval < 0:
		return bad("RenewInterval", "negative")
	case o.HandoffTimeout < 0:
		return bad("HandoffTimeout", "negative")
	case o.MaxLeasesPerInstance < 0:
		return bad("MaxLeasesPerInstance", "negative")
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
		return bad("RenewInterval", fmt.Sprintf("%v is more than half of LeaseDuration %v: a lease must be renewed at least twice per duration", o.RenewInterval, o.LeaseDuration))
	}
	if o.RenewInterval < 2*time.Millisecond {
		return bad("RenewInterval", "shorter than 2ms")
	}
	return nil
}

// resolve fills in defaults and checks o.
func (o *Options) resolve() error {
	if err := Resolve(&o.LeaseOptions, "Options"); err != nil {
		return err
	}
	if o.Owner == "" {
		o.Owner = DefaultOwner()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
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
