<!doctype html>
<html lang="{{lang}}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{name}}</title>
<link rel="stylesheet" href="/static/css/site.css">
</head>
<body>
<main>
  <h1>{{name}}</h1>
  % if shop.test_mode:
  <p class="badge">{{say["test_mode"]}}</p>
  % elif shop.config.sandbox:
  <p class="badge">{{say["sandbox"]}}</p>
  % end
  % if cities:
  <p>{{say["in_stock"]}}</p>
  <ul>
    % for city in cities:
    <li>{{city["name"]}} <span class="muted">({{city["units"]}})</span></li>
    % end
  </ul>
  % else:
  <p>{{say["empty"]}}</p>
  % end
  % if shop.bot_username:
  <p><a class="button" href="https://t.me/{{shop.bot_username}}">{{say["in_telegram"]}}</a></p>
  % elif shop.config.bot_token:
  <p>{{say["through_bot"]}}</p>
  % else:
  <p class="muted">The Telegram bot is not connected yet (set <code>BOT_TOKEN</code>).</p>
  % end
  % if shop.config.sandbox:
  <ul class="links">
    % if shop.config.bot_token:
    <li><a href="/app">Try the Mini App in this browser</a> <span class="muted">(owners: log in to the admin first)</span></li>
    % else:
    <li><a href="/app">Try the Mini App in this browser</a> <span class="muted">as a preview shopper</span></li>
    % end
    <li><a href="/admin">Run the shop: the admin</a></li>
  </ul>
  % end
  <p class="muted">Status: <a href="/healthz">{{health["status"]}}</a></p>
</main>
</body>
</html>
