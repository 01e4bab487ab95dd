# Render pages of the real Sidekiq 6.4 Web UI (a Rack app, no HTTP server needed)
# against forkq's Redis, used by tests/test_sidekiq_interop.py.
#
#   ruby web_pages.rb URL NAMESPACE PATH...
#
# Prints {"<path>": {"status": 200, "body": "<html>..."}, ...} as JSON.

require "json"
require "sidekiq"
require "sidekiq/web"
require "rack/mock"
require "redis-namespace"

url, namespace, *paths = ARGV
abort "usage: web_pages.rb URL NAMESPACE PATH..." unless url && namespace && !paths.empty?

Sidekiq.logger.level = Logger::WARN
Redis.silence_deprecations = true if Redis.respond_to?(:silence_deprecations=)
Sidekiq.configure_client do |config|
  config.redis = { url: url, namespace: namespace, size: 2 }
end

app = Sidekiq::Web.new
out = {}
paths.each do |path|
  res = Rack::MockRequest.new(app).get(path, "HTTP_HOST" => "localhost", "rack.session" => {})
  out[path] = { "status" => res.status, "body" => res.body.force_encoding("UTF-8").scrub }
end
puts JSON.generate(out)
