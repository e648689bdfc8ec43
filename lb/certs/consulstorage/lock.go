package consulstorage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	consulapi "github.com/hashicorp/consul/api"
)

// session is one Consul session holding (or trying to acquire) one lock.
type session struct {
	id     string
	cancel context.CancelFunc
	done   chan struct{}
	lost   atomic.Bool // Consul no longer knows the session
}

func (s *Storage) lockKey(name string) (string, string, error) {
	name = cleanKey(name)
	if err := checkKey(name); err != nil {
		return "", "", fmt.Errorf("lock name: %w", err)
	}
	return name, s.locks + name, nil
}

// newSession creates a session with the lock TTL and starts renewing it
// until stop.
func (s *Storage) newSession(ctx context.Context, name string) (*session, error) {
	id, _, err := s.c.Session().Create(&consulapi.SessionEntry{
		Name: "gwnomad-lb certmagic lock " + name,
		TTL:  s.lockTTL.String(),
		// No lock-delay: a dead holder's lock is free as soon as its
		// session goes. The API client sends LockDelay only when non-zero,
		// as whole milliseconds: -1ns is sent as "0ms" (Consul's default
		// would be 15s).
		LockDelay: -1,
		Behavior:  consulapi.SessionBehaviorDelete,
	}, s.w(ctx))
	if err != nil {
		return nil, fmt.Errorf("creating consul session: %w", err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	ss := &session{id: id, cancel: cancel, done: make(chan struct{})}
	go s.renew(rctx, ss, name)
	return ss, nil
}

// renew keeps the session alive every TTL/3 until ctx ends or Consul says
// the session is gone (then the lock is lost and RenewLockLease says so).
func (s *Storage) renew(ctx context.Context, ss *session, name string) {
	defer close(ss.done)
	every := s.lockTTL / 3
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, every)
		entry, _, err := s.c.Session().Renew(ss.id, s.w(rctx))
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.log.Warn("renewing certificate lock session", "lock", name, "err", err)
			t.Reset(time.Second)
		case entry == nil:
			ss.lost.Store(true)
			s.log.Error("certificate lock lost: consul session expired or was destroyed", "lock", name)
			return
		default:
			t.Reset(every)
		}
	}
}

// stop ends renewal and destroys the session (which deletes the lock key,
// if held). Errors leave the session to expire by its TTL.
func (s *Storage) stop(ctx context.Context, ss *session) error {
	ss.cancel()
	<-ss.done
	if _, err := s.c.Session().Destroy(ss.id, s.w(ctx)); err != nil {
		return fmt.Errorf("destroying consul session (the lock frees itself within %s): %w", 2*s.lockTTL, err)
	}
	return nil
}

// permanent tells errors that retrying will not fix (bad request, ACL).
func permanent(err error) bool {
	var se consulapi.StatusError
	if errors.As(err, &se) {
		return se.Code == 400 || se.Code == 401 || se.Code == 403
	}
	msg := err.Error()
	return strings.Contains(msg, "Permission denied") || strings.Contains(msg, "ACL not found")
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// acquire gets the lock for name. With wait, it blocks (a blocking query on
// the lock key) until it gets it or ctx ends; without, it tries once.
func (s *Storage) acquire(ctx context.Context, name string, wait bool) (bool, error) {
	name, key, err := s.lockKey(name)
	if err != nil {
		return false, err
	}
	meta, _ := json.Marshal(map[string]any{"owner": s.owner, "acquired": time.Now().UTC()})
	var ss *session
	cleanup := func() {
		if ss != nil {
			_ = s.stop(context.WithoutCancel(ctx), ss)
			ss = nil
		}
	}
	var lastIndex uint64
	const backoff = 500 * time.Millisecond
	free := false // the last look found the key free (lock-delay or a race)
	tries := 0
	for {
		if err := ctx.Err(); err != nil {
			cleanup()
			return false, fmt.Errorf("waiting for lock %s: %w", name, err)
		}
		if ss != nil && ss.lost.Load() {
			cleanup()
		}
		if ss == nil {
			if ss, err = s.newSession(ctx, name); err != nil {
				if permanent(err) || !wait || ctx.Err() != nil {
					return false, fmt.Errorf("lock %s: %w", name, err)
				}
				s.log.Warn("certificate lock: consul session", "lock", name, "err", err)
				_ = sleepCtx(ctx, backoff)
				continue
			}
		}
		val, err := s.sealer.seal("locks/"+name, meta, time.Now())
		if err != nil {
			cleanup()
			return false, fmt.Errorf("lock %s: %w", name, err)
		}
		ok, _, err := s.kv.Acquire(&consulapi.KVPair{Key: key, Value: val, Session: ss.id}, s.w(ctx))
		if err == nil && ok {
			s.mu.Lock()
			s.held[name] = ss
			s.mu.Unlock()
			return true, nil
		}
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			if permanent(err) || !wait {
				cleanup()
				return false, fmt.Errorf("lock %s: acquiring in consul: %w", name, err)
			}
			if strings.Contains(err.Error(), "invalid session") {
				ss.lost.Store(true)
			}
			s.log.Warn("certificate lock: acquiring", "lock", name, "err", err)
			_ = sleepCtx(ctx, backoff)
			continue
		}
		// TryLock looks at the key once; only a key that looks free (the
		// holder just went) is worth one more attempt.
		if !wait && (tries >= 2 || tries > 0 && !free) {
			cleanup()
			return false, nil
		}
		tries++
		if free {
			// The key looked free but acquiring failed: lock-delay or a
			// competitor in between. Look again shortly, not by blocking.
			_ = sleepCtx(ctx, 100*time.Millisecond)
			lastIndex = 0
		}
		if !wait {
			lastIndex = 0 // TryLock: look, never block
		}
		kvp, qm, err := s.kv.Get(key, (&consulapi.QueryOptions{WaitIndex: lastIndex, WaitTime: s.lockWait}).WithContext(ctx))
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("certificate lock: watching", "lock", name, "err", err)
				_ = sleepCtx(ctx, backoff)
			}
			lastIndex = 0
			continue
		}
		free = kvp == nil || kvp.Session == ""
		if qm.LastIndex < lastIndex {
			lastIndex = 0
		} else {
			lastIndex = qm.LastIndex
		}
	}
}

// Lock acquires the lock for name, blocking until it is free (its holder
// unlocked it, or died and its session expired) or ctx ends.
func (s *Storage) Lock(ctx context.Context, name string) error {
	_, err := s.acquire(ctx, name, true)
	return err
}

// TryLock acquires the lock for name if it is free, without waiting.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	return s.acquire(ctx, name, false)
}

// Unlock releases a lock this Storage holds.
func (s *Storage) Unlock(ctx context.Context, name string) error {
	name = cleanKey(name)
	s.mu.Lock()
	ss := s.held[name]
	delete(s.held, name)
	s.mu.Unlock()
	if ss == nil {
		return fmt.Errorf("unlocking %s: not held by this instance", name)
	}
	if err := s.stop(ctx, ss); err != nil {
		return fmt.Errorf("unlocking %s: %w", name, err)
	}
	return nil
}

// RenewLockLease is certmagic.LockLeaseRenewer: the session is renewed in
// the background already, so this only reports a lock that was lost.
func (s *Storage) RenewLockLease(_ context.Context, name string, _ time.Duration) error {
	name = cleanKey(name)
	s.mu.Lock()
	ss := s.held[name]
	s.mu.Unlock()
	if ss == nil {
		return fmt.Errorf("lock %s: not held by this instance", name)
	}
	if ss.lost.Load() {
		return fmt.Errorf("lock %s: lost (consul session expired)", name)
	}
	return nil
}

// Close releases every lock this Storage holds (for shutdown). Locks that
// cannot be released expire with their sessions.
func (s *Storage) Close(ctx context.Context) error {
	s.mu.Lock()
	held := s.held
	s.held = map[string]*session{}
	s.mu.Unlock()
	var errs []error
	for name, ss := range held {
		if err := s.stop(ctx, ss); err != nil {
			errs = append(errs, fmt.Errorf("releasing lock %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}
