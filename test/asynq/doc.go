// Package asynq_test has one job: run the asynq job queue
// (github.com/hibiken/asynq), unchanged, for two tenants at once through
// keyfence against a real redis-server with per-tenant ACL users, and check
// that each tenant processes exactly its own tasks, that every upstream key
// lands in its tenant's namespace, that asynq's Inspector sees only its own
// tenant, and that no command was refused with NOPERM.
package asynq
