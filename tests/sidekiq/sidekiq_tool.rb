# Real Sidekiq 6.4 Ruby code against forkq's Redis, used by tests/test_sidekiq_interop.py.
#
#   ruby sidekiq_tool.rb URL NAMESPACE read
#   ruby sidekiq_tool.rb URL NAMESPACE push CLASS QUEUE ARGS_JSON
#   ruby sidekiq_tool.rb URL NAMESPACE push_in SECONDS CLASS QUEUE ARGS_JSON   (perform_in: "at")
#   ruby sidekiq_tool.rb URL NAMESPACE retry JID          (Sidekiq::RetrySet entry -> its queue)
#   ruby sidekiq_tool.rb URL NAMESPACE retry_dead JID     (Sidekiq::DeadSet entry -> its queue)
#   ruby sidekiq_tool.rb URL NAMESPACE enqueue_scheduled JID
#   ruby sidekiq_tool.rb URL NAMESPACE delete_queue_job QUEUE JID
#
# The namespace is forkq's "{ns}": Sidekiq wraps its connection in
# Redis::Namespace when `namespace:` is given, so "queue:x" becomes "{ns}:queue:x".
# Prints one JSON object on stdout; exits non-zero with a message on stderr on error.

require "json"
require "sidekiq"
require "sidekiq/api"
require "redis-namespace"

url, namespace, command, *rest = ARGV
abort "usage: sidekiq_tool.rb URL NAMESPACE COMMAND ..." unless url && namespace && command

Sidekiq.logger.level = Logger::WARN
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
Sidekiq.configure_client do |config|
  config.redis = { url: url, namespace: namespace, size: 2 }
end

def record(r)
  {
    "jid" => r.jid,
    "class" => r.klass,
    "display_class" => r.display_class,
    "queue" => r.queue,
    "args" => r.args,
    "display_args" => r.display_args,
    "enqueued_at" => r.enqueued_at&.to_f,
    "created_at" => r.created_at.to_f,
    "latency" => r.latency,
    "error_class" => r["error_class"],
    "error_message" => r["error_message"],
    "retry_count" => r["retry_count"],
  }
end

def sorted_entry(e)
  record(e).merge("score" => e.score, "at" => e.at.to_f, "error" => e.error?)
end

def find_in(set, jid)
  set.find_job(jid) or abort("no entry with jid #{jid} in #{set.name}")
end

out = case command
when "read"
  stats = Sidekiq::Stats.new
  history = Sidekiq::Stats::History.new(1)
  processes = Sidekiq::ProcessSet.new.map do |p|
    {
      "identity" => p.identity, "hostname" => p["hostname"], "pid" => p["pid"],
      "concurrency" => p["concurrency"], "busy" => p["busy"], "beat" => p["beat"],
      "quiet" => p["quiet"], "stopping" => p.stopping?, "rss" => p["rss"],
      "queues" => p.queues, "labels" => p.labels, "tag" => p.tag, "started_at" => p["started_at"],
    }
  end
  workers = []
  Sidekiq::Workers.new.each do |process_id, thread_id, work|
    workers << {
      "process" => process_id, "thread" => thread_id, "queue" => work["queue"],
      "run_at" => work["run_at"], "payload" => work["payload"],
    }
  end
  queues = Sidekiq::Queue.all.map do |q|
    { "name" => q.name, "size" => q.size, "latency" => q.latency, "paused" => q.paused?,
      "jobs" => q.map { |j| record(j) } }
  end
  {
    "stats" => {
      "processed" => stats.processed, "failed" => stats.failed, "enqueued" => stats.enqueued,
      "retry_size" => stats.retry_size, "dead_size" => stats.dead_size,
      "scheduled_size" => stats.scheduled_size, "processes_size" => stats.processes_size,
      "workers_size" => stats.workers_size, "queues" => stats.queues,
      "processed_today" => history.processed.values.first, "failed_today" => history.failed.values.first,
    },
    "processes" => processes,
    "process_set_size" => Sidekiq::ProcessSet.new(false).size,
    "total_concurrency" => Sidekiq::ProcessSet.new(false).total_concurrency,
    "workers" => workers,
    "workers_size" => Sidekiq::Workers.new.size,
    "queues" => queues,
    "retry" => Sidekiq::RetrySet.new.map { |e| sorted_entry(e) },
    "scheduled" => Sidekiq::ScheduledSet.new.map { |e| sorted_entry(e) },
    "dead" => Sidekiq::DeadSet.new.map { |e| sorted_entry(e) },
  }
when "push"
  klass, queue, args_json = rest
  jid = Sidekiq::Client.push("class" => klass, "queue" => queue, "args" => JSON.parse(args_json))
  { "jid" => jid }
when "push_in"
  seconds, klass, queue, args_json = rest
  jid = Sidekiq::Client.push("class" => klass, "queue" => queue, "args" => JSON.parse(args_json),
                             "at" => Time.now.to_f + Float(seconds))
  { "jid" => jid }
when "retry"
  entry = find_in(Sidekiq::RetrySet.new, rest[0])
  entry.retry
  { "retried" => entry.jid }
when "retry_dead"
  entry = find_in(Sidekiq::DeadSet.new, rest[0])
  entry.retry
  { "retried" => entry.jid }
when "enqueue_scheduled"
  entry = find_in(Sidekiq::ScheduledSet.new, rest[0])
  entry.add_to_queue
  { "enqueued" => entry.jid }
when "delete_queue_job"
  queue, jid = rest
  job = Sidekiq::Queue.new(queue).find_job(jid) or abort("no job #{jid} in queue #{queue}")
  { "deleted" => job.delete }
else
  abort "unknown command #{command}"
end

puts JSON.generate(out)
