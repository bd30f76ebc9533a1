// Package asynq_test has one job: run the asynq job queue
// (github.com/hibiken/asynq), unchanged, for several tenants at once through
// keyfence against a real redis-server, and check that each tenant processes
// exactly its own tasks, that every upstream key lands in its tenant's
// namespace, that asynq's Inspector sees only its own tenant, and that no
// command was refused with NOPERM. It runs twice: two tenants in sidecar
// mode (a keyfence each, logged in upstream as the tenant's ACL user), and
// three tenants through one gateway keyfence, each tenant's asynq picking
// its tenant with go-redis's Username and Password.
package asynq
