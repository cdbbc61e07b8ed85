package checkpoint

import (
	"errors"
	"fmt"
)

// ErrOwnerTaken is wrapped by the error a leasing store returns from
// SyncLeases when another process started with the same owner id (the
// stores' Options.Owner) and took over this process's heartbeat and leases:
// two live processes must never share an identity. The error is permanent;
// a source fails with it. Match it with errors.Is, or get the owner with
// errors.As and [*OwnerConflictError].
var ErrOwnerTaken = errors.New("checkpoint: the lease owner id was taken over by another process")

// OwnerConflictError is the error of a process whose owner id was taken over
// by a newer process with the same id (see [ErrOwnerTaken]). The process
// gave up every lease without writing; the newer one holds them.
type OwnerConflictError struct {
	// Owner is the owner id the two processes share.
	Owner string
}

func (e *OwnerConflictError) Error() string {
	return fmt.Sprintf("checkpoint: another process started with lease owner id %q and took over its leases; "+
		"give every running instance its own Owner (two live processes with one id are not supported)", e.Owner)
}

// Is reports whether target is ErrOwnerTaken.
func (e *OwnerConflictError) Is(target error) bool { return target == ErrOwnerTaken }
