% rebase('admin/base.tpl', title='Order #%d' % order['id'], section='/admin/orders')
<p><a href="/admin/orders">← Orders</a></p>
<h1>Order #{{order["id"]}} <span class="status {{order['status']}}">{{order["status"]}}</span></h1>
<section class="card">
  <p>Shopper: <a href="/admin/users/{{order['user_id']}}">{{order["first_name"]}}{{(" @" + order["username"]) if order["username"] else ""}} ({{order["user_id"]}})</a></p>
  % if order["discount_cents"]:
  <p class="discount">List price {{fmt(order["total_cents"] + order["discount_cents"])}} − discount {{fmt(order["discount_cents"])}} (code <a href="/admin/promos/{{order['promo_id']}}"><code>{{order["promo_code"] or "#%d" % order["promo_id"]}}</code></a>) = {{fmt(order["total_cents"])}} {{"paid" if order["paid_at"] else "to pay"}}</p>
  % end
  <p>Total {{fmt(order["total_cents"])}}{{(" = " + stars(stars_payment["pay_amount"])) if stars_payment else ""}}, paid with {{method_words.get(order["payment_method"], order["payment_method"])}} · created {{order["created_at"][:19].replace("T", " ")}} UTC{{(" · paid " + order["paid_at"][:19].replace("T", " ") + " UTC") if order["paid_at"] else ""}}</p>
  <p class="muted">Messages to the shopper: {{" · ".join("%d %s%s" % (m["n"], m["status"], (" (" + m["error"] + ")") if m["error"] and m["status"] == "failed" else "") for m in messages) or "none"}}</p>
</section>
<section class="card">
  <h2>Items</h2>
  <table class="rows">
    % off = order["discount_cents"]
    <thead><tr><th>Product</th><th>Place</th><th class="num">Price</th>{{!'<th class="num">Discount</th><th class="num">Paid</th>' if off else ''}}<th>Content (the goods)</th></tr></thead>
    <tbody>
    % for i in items:
    <tr><td data-label="Product" class="key">{{i["product_name"]}}</td><td data-label="Place">{{i["place_name"]}}</td><td data-label="Price" class="num">{{fmt(i["price_cents"])}}</td>
      % if off:
      <td data-label="Discount" class="num">{{("−" + fmt(i["discount_cents"])) if i["discount_cents"] else "none"}}</td><td data-label="Paid" class="num">{{fmt(i["price_cents"] - i["discount_cents"])}}</td>
      % end
      <td data-label="Content (the goods)" class="content wide">{{i["content"]}}{{" 📷" if i["media"] else ""}}</td></tr>
    % end
    </tbody>
  </table>
</section>
% pending_refund = any(r["status"] == "pending" for r in star_refunds)
% if order["payment_method"] == "stars":
<section class="card stars-order" id="stars">
  <h2>Telegram Stars</h2>
  % if stars_payment:
  <table><tbody>
    <tr><th>Paid</th><td>{{stars(stars_payment["pay_amount"])}} ({{fmt(order["total_cents"])}} at the prices)</td></tr>
    <tr><th>Charge id</th><td><code class="charge">{{stars_payment["charge_id"]}}</code></td></tr>
    <tr><th>Payment</th><td><a href="/admin/payments/{{stars_payment['id']}}">{{stars_payment["provider_id"]}}</a> · {{stars_payment["status"]}}</td></tr>
  </tbody></table>
  % else:
  <p class="muted">Not paid: Telegram has not charged this order's invoice.</p>
  % end
  % if pending_refund:
  <div class="flash warn">A refund in Stars is under way: Telegram has not confirmed it yet. The shop keeps asking (see below) and alerts the owners if it keeps failing.</div>
  % elif order["status"] == "refunded" and star_refunds:
  <p>Refunded in Stars to the shopper.</p>
  % end
</section>
% end
% if order["status"] == "paid":
<section class="cards">
  <form method="post" action="/admin/orders/{{order['id']}}/resend" class="card form">
    % include('admin/_csrf.tpl')
    <h2>Send the items again</h2>
    <p class="muted">Queues the delivery messages to the shopper once more.</p>
    <button type="submit">Re-send delivery</button>
  </form>
  % if order["payment_method"] == "stars":
  % if stars_payment and not pending_refund:
  <form method="post" action="/admin/orders/{{order['id']}}/refund-stars" class="card form">
    % include('admin/_csrf.tpl')
    <h2>Refund in Stars</h2>
    <p class="muted">Gives the shopper's {{stars(stars_payment["pay_amount"])}} back in Telegram (Stars are refunded as Stars, never to the balance); the order becomes refunded once Telegram confirms. The goods were delivered.</p>
    <label>Reason (the shopper is told it) <input name="reason" required maxlength="200"></label>
    <button type="submit" class="danger">Refund {{stars(stars_payment["pay_amount"])}}</button>
  </form>
  % end
  % else:
  <form method="post" action="/admin/orders/{{order['id']}}/refund" class="card form">
    % include('admin/_csrf.tpl')
    <h2>Refund to balance</h2>
    <p class="muted">Cancels the order and credits {{fmt(order["total_cents"])}} to the shopper's balance.</p>
    <label>Reason (the shopper is told it) <input name="reason" required maxlength="200"></label>
    <button type="submit" class="danger">Refund {{fmt(order["total_cents"])}}</button>
  </form>
  % end
</section>
% end
% if star_refunds:
<section class="card">
  <h2>Refunds in Stars</h2>
  % include('admin/_star_refunds.tpl', refunds=star_refunds)
</section>
% end
% if payments:
<section class="card">
  <h2>Payments</h2>
  % include('admin/_payment_rows.tpl', payments=payments)
</section>
% end
% if ipns:
<section class="card">
  <h2>IPN history</h2>
  % include('admin/_ipns.tpl', ipns=ipns)
</section>
% end
