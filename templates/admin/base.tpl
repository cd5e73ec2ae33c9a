<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="htmx-config" content='{"includeIndicatorStyles": false, "allowEval": false, "allowScriptTags": false, "defaultSettleDelay": 0}'>
<title>{{title}} · {{shop_name}} admin</title>
<link rel="stylesheet" href="/static/admin/admin.css">
<script src="/static/vendor/htmx-2.0.11.min.js" defer></script>
</head>
<body hx-headers='{"X-CSRF-Token": "{{csrf}}"}'>
<header class="top">
  <a class="brand" href="/admin">{{shop_name}}</a>
  % if test_mode:
  <span class="badge" title="A bot without NOWPAYMENTS_API_KEY: payments are simulated and only ADMIN_IDS and TESTER_IDS can buy">test mode</span>
  % elif sandbox:
  <span class="badge">sandbox</span>
  % end
  <details class="menu-toggle">
    <summary aria-controls="menu"><span class="icon" aria-hidden="true"></span>Menu</summary>
  </details>
  <div class="menu" id="menu">
    <nav aria-label="Admin sections">
      % for href, label in [("/admin", "Dashboard"), ("/admin/catalog", "Catalog"), ("/admin/orders", "Orders"), ("/admin/payments", "Payments"), ("/admin/users", "Users"), ("/admin/promos", "Promotions"), ("/admin/broadcast", "Broadcast"), ("/admin/settings", "Settings"), ("/admin/data", "Data"), ("/admin/audit", "Audit log")]:
      % here = get('section') == href
      <a href="{{href}}" class="{{'on' if here else ''}}" {{!'aria-current="page"' if here else ''}}>{{label}}</a>
      % end
    </nav>
    <form method="post" action="/admin/logout" class="logout">
      <input type="hidden" name="csrf_token" value="{{csrf}}">
      <button type="submit" class="link">Log out</button>
    </form>
  </div>
</header>
<main>
  % if flash:
  <p class="flash {{'bad' if flash.startswith('⚠️') else 'good'}}" role="status">{{flash}}</p>
  % end
  {{!base}}
</main>
</body>
</html>
