% rebase('admin/base.tpl', title='Settings', section='/admin/settings')
<h1>Settings</h1>
<form method="post" action="/admin/settings" class="card form">
  % include('admin/_csrf.tpl')
  % if get('error'):
  <p class="flash bad" role="alert">⚠️ {{error}} Nothing was saved.</p>
  % end
  <label>Shop name <input name="shop_name" value="{{values['shop_name']}}" maxlength="64" required></label>
  <label>Welcome text (after /start; empty: the shop's own, in each shopper's language, shown greyed while the box is empty) <textarea name="welcome_text" rows="3" maxlength="1000" placeholder="{{defaults['welcome_text']}}">{{values["welcome_text"]}}</textarea></label>
  <label>Help text (empty: the shop's own, in each shopper's language) <textarea name="help_text" rows="5" maxlength="2000" placeholder="{{defaults['help_text']}}">{{values["help_text"]}}</textarea></label>
  <label>Support contact (shown in /help) <input name="support_contact" value="{{values['support_contact']}}" maxlength="100"></label>
  <label>Minimum top-up in EUR <input name="min_deposit" value="{{values['min_deposit']}}" inputmode="decimal" required></label>
  <label>Reservation (minutes an unpaid order holds its items) <input name="reservation_minutes" value="{{values['reservation_minutes']}}" inputmode="numeric" required></label>
  <label>Items one shopper's unpaid invoices may hold at once <input name="max_unpaid_units" value="{{values['max_unpaid_units']}}" inputmode="numeric" required></label>
  <label>Referral credit in % (a shopper who brought a friend through their link gets this share of the friend's first paid order on their balance, once; 0 turns referrals off and hides the link) <input name="referral_percent" id="referral_percent" value="{{values['referral_percent']}}" inputmode="numeric" required></label>
  <label>Underpayment tolerance in % (a crypto payment short by at most this much pays its order in full; 0 turns it off) <input name="underpayment_tolerance" value="{{values['underpayment_tolerance']}}" inputmode="decimal" required></label>
  <label>Low stock: the dashboard lists what has this many or fewer left in a place, and the owners get a Telegram note when a place falls to it (0 turns both off; sold out is always listed) <input name="low_stock_threshold" id="low_stock_threshold" value="{{values['low_stock_threshold']}}" inputmode="numeric" required></label>
  <fieldset class="stars-settings">
    <legend>Telegram Stars</legend>
    <label for="telegram_rule">Telegram's rule for digital goods
      <select name="telegram_rule" id="telegram_rule">
        <option value="on" {{'selected' if values['telegram_rule'] == 'on' else ''}}>On: digital products in Stars only</option>
        <option value="off" {{'selected' if values['telegram_rule'] == 'off' else ''}}>Off: every way each product allows</option>
      </select></label>
    <p class="muted">Telegram requires digital goods sold in a bot or Mini App to be paid in Telegram Stars, and may hide bots that sell them any other way from mobile users (<a href="{{rule_source}}" target="_blank" rel="noopener noreferrer">Telegram's rules</a>).
    % if rule_summary:
    <a href="/admin/catalog#telegram-rule">{{rule_summary}}</a>.
    % end
    </p>
    <label>Stars per euro, for products without a Stars price of their own <input name="stars_per_euro" id="stars_per_euro" value="{{values['stars_per_euro']}}" inputmode="decimal" required aria-describedby="rate-note"></label>
    <p class="muted" id="rate-note">50 is about what shoppers pay for Stars in Telegram; you receive less when you withdraw them, so raise it to keep your margin. Prices are rounded up to whole Stars.</p>
    <label>/terms: what the bot says about the terms of sale (empty: the default, shown greyed while the box is empty) <textarea name="terms_text" rows="5" maxlength="3000" placeholder="{{defaults['terms_text']}}">{{values["terms_text"]}}</textarea></label>
    <label>/paysupport: what the bot says to a shopper with a payment problem (empty: the default, which names the support contact, shown greyed while the box is empty) <textarea name="paysupport_text" rows="4" maxlength="2000" placeholder="{{defaults['paysupport_text']}}">{{values["paysupport_text"]}}</textarea></label>
  </fieldset>
  <fieldset class="languages" id="languages">
    <legend>Languages</legend>
    <label for="default_language">Default language
      <select name="default_language" id="default_language" aria-describedby="default-language-note">
        % for code, label in language_options:
        <option value="{{code}}" {{'selected' if values['default_language'] == code else ''}}>{{label}}</option>
        % end
      </select></label>
    <p class="muted" id="default-language-note">What shoppers read when the shop does not speak their Telegram language, and the language of the welcome, help, /terms and /paysupport texts above. Choosing another one makes your texts in it the default ones.</p>
    % if other_languages:
    <p class="lang-texts-head"><b>Texts in other languages</b> <span class="muted">(empty: shoppers in that language read what shows greyed: your text in {{default_language}}, or where you wrote none the shop's own in their language)</span></p>
    % for lang in other_languages:
    <details class="lang-texts" id="texts-{{lang['code']}}" {{'open' if get('error') and lang['written'] else ''}}>
      <summary>{{lang["label"]}} <span class="muted">({{lang["written"]}} of {{len(lang["texts"])}} written)</span></summary>
      % for t in lang["texts"]:
      <label>{{t["label"]}} in {{lang["label"]}} <textarea name="{{t['name']}}" lang="{{lang['code']}}" rows="{{t['rows']}}" maxlength="{{t['max_len']}}" placeholder="{{t['placeholder']}}">{{t["value"]}}</textarea></label>
      % end
    </details>
    % end
    % else:
    <p class="muted">The shop speaks {{default_language}} only: to add a language, see the README's "Languages" (one file, no code change).</p>
    % end
  </fieldset>
  <fieldset>
    <legend>Coins offered</legend>
    % if coins is None:
    <p class="muted">NOWPayments is not answering, so its coin list is not available now.</p>
    % else:
    <input type="hidden" name="coins_listed" value="1">
    % for code in coins:
    <label class="check"><input type="checkbox" name="coins" value="{{code}}" {{'checked' if enabled is None or code in enabled else ''}}> {{labels[code]}}</label>
    % end
    % end
  </fieldset>
  <button type="submit">Save</button>
</form>
<section class="card">
  <h2>Admin sessions</h2>
  <p class="muted">Browsers logged in to this admin now. Changing the admin password ends them all.</p>
  <ul class="sessions">
    % for row in sessions:
    <li>{{row["remote_addr"] or "unknown address"}} · since {{row["created_at"][:16].replace("T", " ")}} UTC · last seen {{row["last_seen_at"][11:16]}} UTC{{" · this browser" if row["token_hash"] == session_hash else ""}}</li>
    % end
  </ul>
  <form method="post" action="/admin/logout-everywhere">
    % include('admin/_csrf.tpl')
    <button type="submit" class="danger">Log out everywhere</button>
  </form>
</section>
