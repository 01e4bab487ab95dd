# Sidekiq 7.3 (vendored sources in shared/sidekiq7/vendor) reading / writing a forkq Redis.
# Usage: ruby sk7_tool.rb VENDOR_DIR REDIS_URL metrics CLASS
#        ruby sk7_tool.rb VENDOR_DIR REDIS_URL push CLASS N   (prints the push times)
#        ruby sk7_tool.rb VENDOR_DIR REDIS_URL retry_all      ("Retry Now" on every retry)
vendor, url, cmd, *rest = ARGV
%w[sidekiq redis-client connection_pool].reverse_each { |g| $LOAD_PATH.unshift(File.join(vendor, g, "lib")) }
require "json"
require "logger"
require "sidekiq"
require "sidekiq/api"
require "sidekiq/metrics/query"
Sidekiq.configure_client do |c|
  c.logger.level = Logger::WARN
  c.redis = {url: url}
end
abort "expected Sidekiq 7.x, got #{Sidekiq::VERSION}" unless Sidekiq::VERSION.start_with?("7.")
case cmd
when "metrics"
  klass = rest.fetch(0)
  q = Sidekiq::Metrics::Query.new
  top = q.top_jobs(minutes: 60)
  job = q.for_job(klass, minutes: 60)
  hist = job.job_results[klass].hist.values.each_with_object(Array.new(26, 0)) do |h, acc|
    h.reverse.each_with_index { |v, i| acc[i] += v.to_i }
  end
  puts JSON.generate(
    "top" => top.job_results.to_h { |k, r| [k, r.totals] },
    "job_totals" => job.job_results[klass].totals,
    "histogram" => hist
  )
when "push"
  klass, n = rest.fetch(0), rest.fetch(1).to_i
  times = n.times.map do |i|
    t = Time.now.to_f
    Sidekiq::Client.push("class" => klass, "queue" => klass, "args" => [i])
    sleep 0.3
    t
  end
  puts JSON.generate("pushed_at" => times)
when "retry_all"
  t = Time.now.to_f
  Sidekiq::RetrySet.new.retry_all
  puts JSON.generate("retried_at" => t)
else
  abort "unknown command #{cmd}"
end
