<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{name}}</title>
<link rel="stylesheet" href="/static/css/site.css">
</head>
<body>
<main>
  <h1>{{name}}</h1>
  % if shop.config.sandbox:
  <p class="badge">Sandbox mode: no real payments are taken.</p>
  % end
  % if cities:
  <p>In stock now in:</p>
  <ul>
    % for city in cities:
    <li>{{city["name"]}} <span class="muted">({{city["units"]}} item{{"s" if city["units"] != 1 else ""}})</span></li>
    % end
  </ul>
  % else:
  <p>The shop is empty right now.</p>
  % end
  % if shop.bot_username:
  <p>Shop through our Telegram bot: <a href="https://t.me/{{shop.bot_username}}">@{{shop.bot_username}}</a></p>
  % elif shop.config.bot_token:
  <p>Shop through our Telegram bot.</p>
  % else:
  <p class="muted">The Telegram bot is not connected yet (set <code>BOT_TOKEN</code>).</p>
  % end
  <p class="muted">Status: <a href="/healthz">{{health["status"]}}</a></p>
</main>
</body>
</html>
